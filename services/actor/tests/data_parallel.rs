//! Two Gloo ranks in two processes (loopback TCPStore) train the policy on a shared PPO batch
//! split unevenly between them (5 and 3 samples of different lengths, so the ranks hold
//! different token counts), for three epochs with gradient clipping and an entropy bonus. Both
//! must end with identical weights, equal (within 1e-5) to one rank training on the whole batch.
//! Then the ranks train once more with mini-batches of 2 while rank 1 has no samples at all
//! (rank 0 takes 3 updates, rank 1 joins each with zero gradients): still identical.
//!
//! Then the same two ranks under ZeRO-1 and ZeRO-2 (AdamW state sharded in 4099-element buckets,
//! so shards cut through tensors unevenly) must end with the replicated pair's weights within
//! 1e-6 relative, after both the three clipped epochs and the uneven update.
//!
//! A `harness = false` test: without `RRLHF_TEST_RANK` it builds the model, trains the single
//! rank in-process, starts itself twice as the two ranks (once per ZeRO stage), and compares
//! the saved weights.
//! In-process first: gradient accumulation — micro-batches of 1, 2 and 4 samples inside
//! mini-batches of 4 give the same updates as none (within 1e-5).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rrlhf_actor_service::engine::{Policy, PpoJob};
use rrlhf_dist::{Backend, GroupConfig};
use rrlhf_model::{Arch, Placement};
use rrlhf_train::data_parallel::{DataParallel, UpdatePlan};
use rrlhf_train::zero::ZeroStage;
use tch::Tensor;

const SAMPLES: usize = 8;
/// Rank 0 trains on the first `SPLIT` samples, rank 1 on the rest.
const SPLIT: usize = 5;

fn main() {
    tch::set_num_threads(1);
    match std::env::var("RRLHF_TEST_RANK") {
        Ok(rank) => {
            let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is set"));
            rank_main(
                rank.parse().expect("rank"),
                &var("RRLHF_TEST_STORE"),
                Path::new(&var("RRLHF_TEST_MODEL")),
                Path::new(&var("RRLHF_TEST_OUT")),
            )
        }
        Err(_) => compare_one_rank_with_two(),
    }
}

/// A deterministic PPO batch for a vocabulary of `vocab` tokens (same on every process).
fn job(policy: &Policy, vocab: i64) -> PpoJob {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut pairs = Vec::new();
    for i in 0..SAMPLES {
        let prompt: Vec<i64> = (0..2 + i % 3)
            .map(|_| (next() % vocab as u64) as i64)
            .collect();
        let response: Vec<i64> = (0..1 + (i * 5) % 7)
            .map(|_| (next() % vocab as u64) as i64)
            .collect();
        pairs.push((prompt, response));
    }
    // Old log-probs near the current ones, so some ratios fall outside the clip range.
    let current = policy.logprobs(&pairs).expect("log-probs");
    let old_logprobs = current
        .iter()
        .map(|row| {
            row.iter()
                .map(|lp| lp + ((next() % 1000) as f32 / 1000.0 - 0.5) * 0.6)
                .collect()
        })
        .collect();
    let advantages = pairs
        .iter()
        .map(|(_, r)| {
            r.iter()
                .map(|_| (next() % 2000) as f32 / 1000.0 - 1.0)
                .collect()
        })
        .collect();
    PpoJob {
        pairs,
        old_logprobs,
        advantages,
        clip_eps: 0.2,
        entropy_coef: 0.01,
        plan: UpdatePlan {
            micro_batch_size: 0,
            minibatch_size: 0,
            epochs: 3,
            lr: 1e-3,
            max_grad_norm: 0.5,
            seed: 7,
        },
    }
}

fn shard(job: &PpoJob, range: std::ops::Range<usize>) -> PpoJob {
    PpoJob {
        pairs: job.pairs[range.clone()].to_vec(),
        old_logprobs: job.old_logprobs[range.clone()].to_vec(),
        advantages: job.advantages[range].to_vec(),
        ..job.clone()
    }
}

fn train_and_save(dp: Option<DataParallel>, rank: usize, model: &Path, out: &Path) {
    let policy =
        Policy::load(model, Placement::default(), 0.01, None, dp).expect("load the policy");
    let full = full_job_of(&policy);
    let mine = match rank {
        0 if std::env::var("RRLHF_TEST_RANK").is_err() => full,
        0 => shard(&full, 0..SPLIT),
        _ => shard(&full, SPLIT..SAMPLES),
    };
    let stats = policy.ppo_update(&mine).expect("train");
    assert_eq!(stats.summary.updates, 3, "one update per epoch");
    // ZeRO-2 gives every gradient back once reduced; the other stages keep them.
    let zero2 = std::env::var("RRLHF_TEST_ZERO").is_ok_and(|z| z == "2");
    let held = policy
        .model
        .vs
        .trainable_variables()
        .iter()
        .filter(|v| v.grad().defined())
        .count();
    assert_eq!(held == 0, zero2, "{held} gradients held");
    policy.model.save(out).expect("save");
    if std::env::var("RRLHF_TEST_RANK").is_ok() {
        let mut uneven = shard(
            &full_job_of(&policy),
            if rank == 0 { 0..SPLIT } else { 0..0 },
        );
        uneven.plan.minibatch_size = 2;
        uneven.plan.epochs = 1;
        let stats = policy.ppo_update(&uneven).expect("train on uneven shards");
        assert_eq!(stats.summary.updates, if rank == 0 { 3 } else { 0 });
        policy
            .model
            .save(&out.with_extension("uneven"))
            .expect("save");
    }
}

fn full_job_of(policy: &Policy) -> PpoJob {
    job(policy, policy.model.cfg.vocab_size)
}

fn rank_main(rank: usize, store: &str, model: &Path, out: &Path) {
    let zero = std::env::var("RRLHF_TEST_ZERO").map_or(0, |z| z.parse().expect("a ZeRO stage"));
    let dp = DataParallel::join(
        &GroupConfig {
            backend: Backend::Gloo,
            store: store.into(),
            rank,
            world_size: 2,
            timeout: Duration::from_secs(60),
        },
        tch::Device::Cpu,
    )
    .expect("join the group")
    .with_zero(ZeroStage::from_level(zero).expect("stage"))
    .with_bucket_elements(4099);
    train_and_save(Some(dp), rank, model, out);
}

fn weights(dir: &Path) -> Vec<(String, Tensor)> {
    let mut w = Tensor::read_safetensors(dir.join("model.safetensors")).expect("saved weights");
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

/// Largest absolute difference between two sets of weights, by name.
fn max_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    a.iter()
        .zip(b)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            (ta - tb).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

/// PPO updates over mini-batches of 4 with micro-batches of 1, 2 and 4 equal those without.
fn accumulation_matches_whole_minibatches(model: &Path) {
    let trained = |micro: usize| {
        let policy = Policy::load(model, Placement::default(), 0.01, None, None).expect("load");
        let mut job = full_job_of(&policy);
        job.plan.minibatch_size = 4;
        job.plan.epochs = 2;
        job.plan.micro_batch_size = micro;
        let stats = policy.ppo_update(&job).expect("train");
        let mut w: Vec<(String, Tensor)> = policy.model.vs.variables().into_iter().collect();
        w.sort_by(|a, b| a.0.cmp(&b.0));
        (stats, w)
    };
    let (whole, reference) = trained(0);
    assert_eq!(whole.summary.updates, 4, "2 epochs × 2 mini-batches");
    for micro in [1, 2, 4] {
        let (stats, w) = trained(micro);
        let diff = max_diff(&w, &reference);
        assert!(
            diff < 1e-5,
            "micro-batches of {micro}: weights differ by {diff}"
        );
        let loss_diff = (stats.summary.loss_mean - whole.summary.loss_mean).abs();
        assert!(
            loss_diff < 1e-5,
            "micro-batches of {micro}: mean loss differs by {loss_diff}"
        );
    }
    println!("accumulation: micro-batches of 1, 2, 4 match whole mini-batches");
}

fn compare_one_rank_with_two() {
    let root = tempfile::tempdir().expect("temp dir");
    let model = root.path().join("policy");
    tch::manual_seed(11);
    rrlhf_testkit::models::causal_lm(&model, Arch::Llama, 96);
    accumulation_matches_whole_minibatches(&model);

    let single = root.path().join("single");
    train_and_save(None, 0, &model, &single);

    let outs = two_ranks(&model, &root.path().join("replicated"), 0);
    let (start, one, r0, r1) = (
        weights(&model),
        weights(&single),
        weights(&outs[0]),
        weights(&outs[1]),
    );
    assert_eq!(one.len(), r0.len());
    let mut largest = 0f64;
    let mut moved = 0f64;
    for ((((name, s), (_, a)), (_, b)), (_, w0)) in one.iter().zip(&r0).zip(&r1).zip(&start) {
        assert!(a.equal(b), "{name}: the two ranks differ");
        largest = largest.max((a - s).abs().max().double_value(&[]));
        moved = moved.max((s - w0).abs().max().double_value(&[]));
    }
    assert!(
        moved > 1e-3,
        "training changed the weights (largest change {moved})"
    );
    assert!(
        largest < 1e-5,
        "two ranks differ from one rank on the whole batch by up to {largest}"
    );
    let uneven: Vec<_> = outs
        .iter()
        .map(|o| weights(&o.with_extension("uneven")))
        .collect();
    for ((name, a), ((_, b), (_, before))) in uneven[0].iter().zip(uneven[1].iter().zip(&r0)) {
        assert!(
            a.equal(b),
            "{name}: the ranks differ after the uneven update"
        );
        assert!(
            !a.equal(before) || name.contains("norm"),
            "{name} did not move"
        );
    }
    println!(
        "data parallel: 2 ranks identical; max |2 ranks − 1 rank| = {largest:.2e} (weights moved up to {moved:.2e})"
    );
    for stage in [1, 2] {
        let sharded = two_ranks(&model, &root.path().join(format!("zero{stage}")), stage);
        let mut worst = 0f64;
        for (replicated, zero) in outs.iter().zip(&sharded) {
            for ext in ["", "uneven"] {
                let (a, b) = (
                    weights(&replicated.with_extension(ext)),
                    weights(&zero.with_extension(ext)),
                );
                let scale = a
                    .iter()
                    .map(|(_, t)| t.abs().max().double_value(&[]))
                    .fold(0.0, f64::max);
                worst = worst.max(max_diff(&a, &b) / scale);
            }
        }
        assert!(
            worst <= 1e-6,
            "ZeRO-{stage}: weights differ from the replicated ranks' by {worst:e} (relative)"
        );
        println!("ZeRO-{stage}: weights within {worst:.1e} (relative) of the replicated ranks");
    }
}

/// Starts this binary twice as ranks 0 and 1 of a group at ZeRO `stage`, each training and
/// saving under `root`; returns their output directories once both succeeded.
fn two_ranks(model: &Path, root: &Path, stage: u32) -> Vec<PathBuf> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let exe = std::env::current_exe().expect("test binary");
    let outs: Vec<PathBuf> = (0..2).map(|r| root.join(format!("rank{r}"))).collect();
    let mut children: Vec<_> = outs
        .iter()
        .enumerate()
        .map(|(rank, out)| {
            Command::new(&exe)
                .env("RRLHF_TEST_RANK", rank.to_string())
                .env("RRLHF_TEST_STORE", format!("127.0.0.1:{port}"))
                .env("RRLHF_TEST_MODEL", model)
                .env("RRLHF_TEST_OUT", out)
                .env("RRLHF_TEST_ZERO", stage.to_string())
                .spawn()
                .expect("start a rank")
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(180);
    for (rank, child) in children.iter_mut().enumerate() {
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "ZeRO-{stage} rank {rank} failed: {status}"
                );
                break;
            }
            assert!(Instant::now() < deadline, "rank {rank} did not finish");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    outs
}
