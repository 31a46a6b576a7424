//! ZeRO stages 1 and 2 over a real two-rank Gloo group (two threads, loopback store), through
//! the `TrainState` the actor and critic train with. A two-layer network whose variables
//! straddle small buckets (so shards are uneven and cut through variables) trains on shards of
//! 3 and 2 samples with clipping and micro-batches:
//! - the sharded stages end with the weights of the replicated optimizer (1e-6 relative);
//! - each rank holds about half of the optimizer state;
//! - stage 2 holds no gradient between updates;
//! - a state saved by two sharded ranks loads into one rank, and one rank's into two sharded
//!   ranks, and training continues as if never interrupted (a bf16 model's masters and
//!   moments cross world sizes bit for bit);
//! - a rank whose loss fails stops both ranks at that update.

use std::path::Path;
use std::time::Duration;

use rrlhf_dist::{Backend, GroupConfig};
use rrlhf_model::ModelError;
use rrlhf_train::TrainError;
use rrlhf_train::data_parallel::{DataParallel, MinibatchLoss, UpdatePlan, checksum};
use rrlhf_train::train_state::TrainState;
use rrlhf_train::zero::ZeroStage;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// Samples in the batch; rank 0 of two trains on the first `SPLIT`, rank 1 on the rest.
const SAMPLES: usize = 5;
const SPLIT: usize = 3;
/// 16-element buckets: the 66 weights make 5 buckets, every variable but the last bias
/// straddles one, and the last bucket (2 elements) gives the ranks 1 each.
const BUCKET: i64 = 16;

struct Net {
    vs: nn::VarStore,
    layers: (nn::Linear, nn::Linear),
}

/// A 5 → 7 → 3 network with weights fixed by a formula (equal on every thread), in `kind`.
fn net(kind: Kind) -> Net {
    let mut vs = nn::VarStore::new(Device::Cpu);
    let layers = (
        nn::linear(vs.root() / "a", 5, 7, Default::default()),
        nn::linear(vs.root() / "b", 7, 3, Default::default()),
    );
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (i, (_, mut v)) in vars.into_iter().enumerate() {
            let n = v.numel() as i64;
            let values = ((Tensor::arange(n, (Kind::Float, Device::Cpu)) * 0.61 + i as f64).sin()
                * 0.4)
                .view(v.size().as_slice());
            v.copy_(&values);
        }
    });
    vs.set_kind(kind);
    Net { vs, layers }
}

impl Net {
    /// Token-mean squared error of samples `idx` of the batch; sample i counts 1 + i % 3 tokens.
    fn loss(&self, idx: &[usize]) -> rrlhf_train::Result<MinibatchLoss<()>> {
        let rows: Vec<f32> = idx
            .iter()
            .flat_map(|&i| (0..5).map(move |j| ((i * 5 + j) as f32 * 0.37).cos()))
            .collect();
        let x = Tensor::from_slice(&rows)
            .view([idx.len() as i64, 5])
            .to_kind(self.vs.kind());
        let out = self.layers.1.forward(&self.layers.0.forward(&x).tanh());
        let weights: Vec<f32> = idx.iter().map(|&i| (1 + i % 3) as f32).collect();
        let tokens: f64 = weights.iter().map(|&w| w as f64).sum();
        let per_sample = (out.to_kind(Kind::Float) - 0.5).square().sum_dim_intlist(
            [1i64].as_slice(),
            false,
            Kind::Float,
        );
        let loss = (per_sample * Tensor::from_slice(&weights)).sum(Kind::Float) / tokens;
        Ok(MinibatchLoss {
            loss,
            tokens,
            stats: (),
        })
    }

    fn weights(&self) -> Tensor {
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        Tensor::cat(
            &vars
                .iter()
                .map(|(_, t)| t.to_kind(Kind::Double).reshape([-1]))
                .collect::<Vec<_>>(),
            0,
        )
    }

    fn write(&self, dir: &Path) -> Result<(), ModelError> {
        let vars = self.vs.variables().into_iter().collect();
        rrlhf_model::tensor_files::write_file(&dir.join("weights.safetensors"), vars)
    }

    fn read(&self, dir: &Path) -> Result<(), ModelError> {
        let saved = Tensor::read_safetensors(dir.join("weights.safetensors"))
            .map_err(|e| ModelError::InvalidInput(e.to_string()))?;
        let vars = self.vs.variables();
        tch::no_grad(|| {
            for (name, t) in saved {
                vars[&name].shallow_clone().copy_(&t);
            }
        });
        Ok(())
    }
}

/// One update per call (whole shard, micro-batches of 2), clipped.
fn plan(call: usize) -> UpdatePlan {
    UpdatePlan {
        minibatch_size: 0,
        micro_batch_size: 2,
        epochs: 1,
        seed: call as u64,
        lr: 0.05,
        max_grad_norm: 0.3,
    }
}

/// Runs `calls` training calls on `samples` (batch indices); `fail_at` makes that call's loss
/// fail. Returns how many calls succeeded, or the first error.
fn train(
    state: &TrainState,
    net: &Net,
    samples: &[usize],
    calls: std::ops::Range<usize>,
    fail_at: Option<usize>,
) -> Result<usize, TrainError> {
    let mut done = 0;
    for call in calls {
        state.train(&net.vs, &vec![1; samples.len()], &plan(call), |idx| {
            if fail_at == Some(call) {
                return Err(TrainError::Invalid(format!("cannot build call {call}")));
            }
            net.loss(&idx.iter().map(|&i| samples[i]).collect::<Vec<_>>())
        })?;
        done += 1;
    }
    Ok(done)
}

fn free_store() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    format!("127.0.0.1:{port}")
}

fn join(rank: usize, store: &str, stage: ZeroStage) -> DataParallel {
    DataParallel::join(
        &GroupConfig {
            backend: Backend::Gloo,
            store: store.into(),
            rank,
            world_size: 2,
            timeout: Duration::from_secs(30),
        },
        Device::Cpu,
    )
    .expect("join")
    .with_zero(stage)
    .with_bucket_elements(BUCKET)
}

/// This rank's samples in a group of two.
fn shard(rank: usize) -> Vec<usize> {
    if rank == 0 {
        (0..SPLIT).collect()
    } else {
        (SPLIT..SAMPLES).collect()
    }
}

/// Runs `body(rank, group)` on two threads joined in one group at `stage`.
fn two_ranks<T: Send + 'static>(
    stage: ZeroStage,
    body: impl Fn(usize, DataParallel) -> T + Send + Clone + 'static,
) -> Vec<T> {
    let store = free_store();
    let handles: Vec<_> = (0..2)
        .map(|rank| {
            let (store, body) = (store.clone(), body.clone());
            std::thread::spawn(move || body(rank, join(rank, &store, stage)))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("rank thread"))
        .collect()
}

/// ‖a − b‖∞ / ‖b‖∞.
fn rel(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[])
}

/// Weights and optimizer bytes of both ranks after three sharded (or replicated) updates.
fn three_updates(stage: ZeroStage, kind: Kind) -> Vec<(Tensor, i64)> {
    two_ranks(stage, move |rank, dp| {
        let net = net(kind);
        let state = TrainState::new(&net.vs, 0.01, Some(dp)).expect("state");
        train(&state, &net, &shard(rank), 0..3, None).expect("train");
        // Stage 2 gives every gradient's memory back once reduced; the others keep them.
        let held = net
            .vs
            .trainable_variables()
            .iter()
            .filter(|v| v.grad().defined())
            .count();
        assert_eq!(
            held == 0,
            stage == ZeroStage::Gradients,
            "{stage:?}: {held} gradients held"
        );
        (net.weights(), state.optimizer_bytes())
    })
}

#[test]
fn sharded_stages_match_the_replicated_optimizer_with_half_the_state() {
    tch::set_num_threads(1);
    let replicated = three_updates(ZeroStage::Off, Kind::Float);
    let start = net(Kind::Float).weights();
    assert!(
        rel(&replicated[0].0, &start) > 1e-3,
        "three updates moved the weights"
    );
    for stage in [ZeroStage::OptimizerState, ZeroStage::Gradients] {
        let sharded = three_updates(stage, Kind::Float);
        for (rank, (w, _)) in sharded.iter().enumerate() {
            let r = rel(w, &replicated[0].0);
            assert!(r <= 1e-6, "{stage:?} rank {rank}: weights differ by {r:e}");
        }
        assert!(
            sharded[0].0.equal(&sharded[1].0),
            "the ranks hold the same weights"
        );
    }
    // The state per rank: a bf16 model's replicated optimizer holds fp32 masters, moments and
    // gradient copies (16 bytes per weight); each sharded rank holds about half of them (33
    // of 66 weights with the padding of 16-element buckets).
    let replicated = three_updates(ZeroStage::Off, Kind::BFloat16);
    let sharded = three_updates(ZeroStage::Gradients, Kind::BFloat16);
    assert_eq!(replicated[0].1, 16 * 66);
    for (rank, (_, bytes)) in sharded.iter().enumerate() {
        assert_eq!(*bytes, 16 * 33, "rank {rank}");
    }
}

#[test]
fn a_sharded_state_loads_at_another_world_size_and_continues_identically() {
    tch::set_num_threads(1);
    for stage in [ZeroStage::OptimizerState, ZeroStage::Gradients] {
        let dir = tempfile::tempdir().expect("tempdir");
        let two = dir.path().join("two");
        let one = dir.path().join("one");
        // Uninterrupted, on two sharded ranks: two updates, a checkpoint, a third update.
        let saved = two.clone();
        let straight = two_ranks(stage, move |rank, dp| {
            let net = net(Kind::Float);
            let state = TrainState::new(&net.vs, 0.01, Some(dp)).expect("state");
            train(&state, &net, &shard(rank), 0..2, None).expect("train");
            state
                .checkpoint(&saved, |tmp| net.write(tmp))
                .expect("checkpoint");
            train(&state, &net, &shard(rank), 2..3, None).expect("train");
            net.weights()
        });
        // One rank loads the two ranks' checkpoint and takes the third update on the whole
        // batch.
        let net1 = net(Kind::Float);
        let state1 = TrainState::new(&net1.vs, 0.01, None).expect("state");
        state1.load(&net1.vs, |d| net1.read(d), &two).expect("load");
        let all: Vec<usize> = (0..SAMPLES).collect();
        train(&state1, &net1, &all, 2..3, None).expect("train");
        let r = rel(&net1.weights(), &straight[0]);
        assert!(r <= 1e-6, "{stage:?} 2 → 1: weights differ by {r:e}");
        // And back: one rank's checkpoint (after its 3rd update) into two sharded ranks,
        // which take a fourth update; the lone rank takes it too.
        state1
            .checkpoint(&one, |tmp| net1.write(tmp))
            .expect("checkpoint");
        train(&state1, &net1, &all, 3..4, None).expect("train");
        let from = one.clone();
        let resumed = two_ranks(stage, move |rank, dp| {
            let net = net(Kind::Float);
            let state = TrainState::new(&net.vs, 0.01, Some(dp)).expect("state");
            state.load(&net.vs, |d| net.read(d), &from).expect("load");
            train(&state, &net, &shard(rank), 3..4, None).expect("train");
            net.weights()
        });
        for (rank, w) in resumed.iter().enumerate() {
            let r = rel(w, &net1.weights());
            assert!(
                r <= 1e-6,
                "{stage:?} 1 → 2, rank {rank}: weights differ by {r:e}"
            );
        }
    }
}

/// A bf16 model's state (fp32 masters and moments) survives 2 → 1 → 2 ranks bit for bit: the
/// files each world size writes are equal. (Continuing training is compared in fp32 above:
/// bf16 gradients summed over other micro-batch groupings differ by bf16 rounding.)
#[test]
fn a_bf16_state_moves_between_world_sizes_bit_for_bit() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let [a, b, c] = ["a", "b", "c"].map(|n| dir.path().join(n));
    let out = a.clone();
    two_ranks(ZeroStage::Gradients, move |rank, dp| {
        let net = net(Kind::BFloat16);
        let state = TrainState::new(&net.vs, 0.01, Some(dp)).expect("state");
        train(&state, &net, &shard(rank), 0..2, None).expect("train");
        state.checkpoint(&out, |tmp| net.write(tmp)).expect("save");
    });
    let net1 = net(Kind::BFloat16);
    let state1 = TrainState::new(&net1.vs, 0.01, None).expect("state");
    state1.load(&net1.vs, |d| net1.read(d), &a).expect("load");
    state1.checkpoint(&b, |tmp| net1.write(tmp)).expect("save");
    let (from, out) = (b.clone(), c.clone());
    two_ranks(ZeroStage::OptimizerState, move |_, dp| {
        let net = net(Kind::BFloat16);
        let state = TrainState::new(&net.vs, 0.01, Some(dp)).expect("state");
        state.load(&net.vs, |d| net.read(d), &from).expect("load");
        state.checkpoint(&out, |tmp| net.write(tmp)).expect("save");
    });
    let read = |dir: &Path| {
        let mut t = Tensor::read_safetensors(dir.join("optimizer.safetensors")).expect("state");
        t.sort_by(|x, y| x.0.cmp(&y.0));
        t
    };
    let first = read(&a);
    assert_eq!(
        first.len(),
        1 + 3 * 4,
        "step, and moments and master of 4 variables"
    );
    for other in [read(&b), read(&c)] {
        for ((n1, t1), (n2, t2)) in first.iter().zip(&other) {
            assert_eq!(n1, n2);
            assert!(t1.equal(t2), "`{n1}` changed on the way");
        }
    }
}

#[test]
fn a_failing_rank_stops_both_sharded_ranks_at_that_update() {
    tch::set_num_threads(1);
    let out = two_ranks(ZeroStage::Gradients, |rank, dp| {
        let net = net(Kind::Float);
        let state = TrainState::new(&net.vs, 0.0, Some(dp)).expect("state");
        let fail_at = (rank == 1).then_some(1);
        let result = train(&state, &net, &shard(rank), 0..3, fail_at);
        (result.map_err(|e| e.to_string()), checksum(&net.vs))
    });
    let own = out[1].0.as_ref().unwrap_err();
    assert!(own.contains("cannot build call 1"), "{own}");
    let other = out[0].0.as_ref().unwrap_err();
    assert!(
        other.contains("another data-parallel rank could not compute its loss in update 1"),
        "{other}"
    );
    assert_eq!(
        out[0].1, out[1].1,
        "both took the first update and no other"
    );
}
