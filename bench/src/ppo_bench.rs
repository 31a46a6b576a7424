//! `rrlhf-ppo-bench`: the same-work PPO step. It prepares random models of one shape (a policy,
//! a one-head reward model that also starts the critic, a K-head BRME on the same backbone, a
//! BPE tokenizer trained on the HH-RLHF data) and fixed-length prompts of random token ids, then
//! runs PPO steps through the real four services on loopback (the embedded cluster of
//! `rrlhf run`) with every response sampled to exactly `--new-tokens` tokens, and prints the
//! median step and its generate / score-tail / train split as one JSON object.
//! `bench/ppo_step.sh` runs it next to TRL's PPO (`bench/ppo_peer.py`), which loads the same
//! checkpoints and prompts.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Parser;
use rrlhf_embedded::{Cluster, ModelDirs, Options};
use rrlhf_model::config::{Arch, ModelConfig, SizePreset};
use rrlhf_model::reward_model::{RewardMeta, RewardModel};
use rrlhf_model::{CausalLm, Placement, TextTokenizer};
use rrlhf_orchestrator::OrchestratorConfig;
use rrlhf_orchestrator::config::{PromptSettings, PromptSource};
use rrlhf_orchestrator::run::{RunOptions, RunStatus, spawn_run};
use serde_json::json;

#[derive(Parser, Debug)]
struct Args {
    /// Work directory: `models/` (shared with the peer) and one run directory per `--tag`.
    #[arg(long, default_value = "out/ppo-step")]
    out: PathBuf,
    /// Name of this measurement's run directory under `--out`.
    #[arg(long, default_value = "rrlhf")]
    tag: String,
    /// Text the tokenizer is trained on (HH-RLHF JSONL(.gz)).
    #[arg(
        long,
        default_value = "../shared/data/hh-rlhf/harmless-base-test.jsonl.gz"
    )]
    data: PathBuf,
    /// Model shape preset (`tiny`, `small`, `medium`).
    #[arg(long, default_value = "small")]
    size: String,
    #[arg(long, default_value_t = 8192)]
    vocab_size: usize,
    /// Heads of the BRME that scores the samples.
    #[arg(long, default_value_t = 1)]
    heads: i64,
    /// Prompts per PPO step (the experience batch).
    #[arg(long, default_value_t = 128)]
    prompts: usize,
    #[arg(long, default_value_t = 48)]
    prompt_len: usize,
    /// Response length: every response is sampled to exactly this many tokens.
    #[arg(long, default_value_t = 32)]
    new_tokens: u32,
    /// Mini-batches per PPO epoch (actor and critic alike).
    #[arg(long, default_value_t = 4)]
    mini_batches: u32,
    #[arg(long, default_value_t = 1)]
    epochs: u32,
    /// PPO steps; the first is a warm-up and left out of the medians.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// libtorch intra-op threads of every engine (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Sequences per reference `LogProbs` / critic `Values` call (`run.sequences_per_call`).
    #[arg(long, default_value_t = 1)]
    sequences_per_call: usize,
    /// Let the services merge concurrent requests into shared batches (`engine.merge_requests`).
    #[arg(long)]
    merge_requests: bool,
    /// Only write the models and prompts (for the peer), then exit.
    #[arg(long)]
    prepare_only: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// The prepared inputs, shared by both sides of the comparison.
struct Prepared {
    dirs: ModelDirs,
    prompts: PathBuf,
}

/// Writes the models and prompts once; later calls (and the peer) reuse them.
fn prepare(a: &Args) -> Result<Prepared> {
    let models = a.out.join("models");
    let dirs = ModelDirs {
        policy: models.join("policy"),
        critic: models.join("reward-1"),
        reward: models.join("brme"),
    };
    let prompts = models.join("prompts.jsonl");
    if prompts.exists() {
        return Ok(Prepared { dirs, prompts });
    }
    std::fs::create_dir_all(&models)?;
    let tok_dir = models.join("tokenizer");
    let tok = if tok_dir.join("tokenizer.json").exists() {
        TextTokenizer::load(&tok_dir)?
    } else {
        let texts = rrlhf_data::sft::load(&a.data)
            .with_context(|| format!("reading {}", a.data.display()))?
            .examples
            .into_iter()
            .map(|e| format!("{}{}", e.prompt, e.response));
        rrlhf_model::tokenizer::train_bpe(texts, a.vocab_size, &tok_dir)?
    };
    let preset = SizePreset::by_name(&a.size)
        .with_context(|| format!("unknown size `{}` (tiny, small, medium)", a.size))?;
    let positions = (a.prompt_len + a.new_tokens as usize + 16).max(512) as i64;
    let cfg = ModelConfig::new_random_for(Arch::Llama, &preset, &tok, positions);
    tch::manual_seed(a.seed as i64);
    CausalLm::new(cfg, Placement::default())?.save(&dirs.policy)?;
    tok.save_to(&dirs.policy)?;
    for (dir, meta) in [
        (&dirs.critic, RewardMeta::bradley_terry(None)),
        (&dirs.reward, RewardMeta::brme(a.heads, 0.5, None)?),
    ] {
        RewardModel::from_base(&dirs.policy, meta, Placement::default())?.save(dir)?;
        tok.save_to(dir)?;
    }
    // Random ids other than the special tokens, one line per prompt, in the format that
    // `prompts.source = "jsonl"` reads.
    let vocab = tok.vocab_size() as u64;
    let mut rng = rrlhf_util::rng::Rng::new(a.seed ^ 0x5eed);
    let special = [tok.eos_id, tok.pad_id];
    let mut lines = String::new();
    for _ in 0..a.prompts {
        let ids: Vec<i64> = std::iter::repeat_with(|| (rng.next_u64() % vocab) as i64)
            .filter(|id| !special.contains(id))
            .take(a.prompt_len)
            .collect();
        lines.push_str(&json!({ "prompt_ids": ids }).to_string());
        lines.push('\n');
    }
    let tmp = prompts.with_extension("tmp");
    std::fs::write(&tmp, lines)?;
    std::fs::rename(&tmp, &prompts)?;
    Ok(Prepared { dirs, prompts })
}

/// The PPO settings both sides share: one experience batch of all prompts per step, sampled at
/// temperature 1 without top-k/top-p to exactly `new_tokens`, `epochs` × `mini_batches`.
fn config(a: &Args, prompts: &Path) -> Result<OrchestratorConfig> {
    let mut cfg = OrchestratorConfig::default();
    cfg.run.id = a.tag.clone();
    cfg.run.out_dir = a.out.clone();
    cfg.run.steps = a.steps;
    cfg.run.batch_size = a.prompts;
    cfg.run.seed = a.seed;
    cfg.run.checkpoint_every = 0;
    cfg.run.sequences_per_call = a.sequences_per_call;
    cfg.prompts = PromptSettings {
        source: PromptSource::Jsonl,
        path: Some(prompts.to_path_buf()),
        max_chars: 0,
    };
    cfg.sampling.temperature = 1.0;
    cfg.sampling.top_k = 0;
    cfg.sampling.top_p = 1.0;
    cfg.sampling.max_new_tokens = a.new_tokens;
    cfg.sampling.min_new_tokens = a.new_tokens;
    anyhow::ensure!(
        a.mini_batches > 0 && a.prompts % a.mini_batches as usize == 0,
        "--mini-batches {} must divide --prompts {}",
        a.mini_batches,
        a.prompts
    );
    for t in [&mut cfg.ppo.actor, &mut cfg.ppo.critic] {
        t.epochs = a.epochs;
        t.minibatch_size = a.prompts as u32 / a.mini_batches;
    }
    cfg.validate()?;
    Ok(cfg)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn main() -> Result<()> {
    let a = Args::parse();
    let prepared = prepare(&a)?;
    if a.prepare_only {
        println!("{}", a.out.join("models").display());
        return Ok(());
    }
    let cfg = config(&a, &prepared.prompts)?;
    let run_dir = a.out.join(&a.tag);
    if run_dir.exists() {
        std::fs::remove_dir_all(&run_dir)?;
    }
    let opts = Options {
        max_length: a.prompt_len + a.new_tokens as usize + 16,
        shutdown_grace_secs: 1.0,
        merge_requests: a.merge_requests,
        threads: a.threads,
        ..Options::default()
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let cluster = Cluster::start(&prepared.dirs, &opts).await?;
        let mut cfg = cfg;
        cfg.endpoints = cluster.endpoints(None);
        let run = spawn_run(
            cfg,
            RunOptions {
                resume: false,
                print_progress: true,
                gold: None,
                pause_on_bad_batch: false,
            },
        )?;
        let status = run.finished().await;
        cluster.stop().await;
        anyhow::ensure!(
            status == RunStatus::Finished,
            "the PPO run ended {status:?}: {}",
            run.info().error.unwrap_or_default()
        );
        Ok::<_, anyhow::Error>(())
    })?;
    let steps = rrlhf_orchestrator::metrics::read_all(&run_dir.join("metrics.jsonl"))?;
    let timed: Vec<_> = steps.iter().skip(1).collect();
    let tokens: Vec<f64> = steps.iter().map(|s| s.response_length as f64).collect();
    anyhow::ensure!(
        tokens
            .iter()
            .all(|&t| (t - a.new_tokens as f64).abs() < 1e-9),
        "responses were not all {} tokens: mean lengths {tokens:?}",
        a.new_tokens
    );
    let med = |f: fn(&rrlhf_orchestrator::metrics::StepMetrics) -> f64| {
        median(timed.iter().map(|s| f(s)).collect())
    };
    println!(
        "{}",
        json!({
            "impl": "rrlhf",
            "threads": a.threads,
            "steps_timed": timed.len(),
            "step_secs": med(|s| s.step_secs),
            "generate_secs": med(|s| s.generate_secs),
            "score_tail_secs": med(|s| s.score_tail_secs),
            "train_secs": med(|s| s.train_secs),
        })
    );
    Ok(())
}
