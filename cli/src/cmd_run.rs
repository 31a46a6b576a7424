//! `rrlhf run`: the main job on the embedded default, in one process.
//!
//! The whole pipeline: train a BPE tokenizer on the HH-RLHF data, initialise a model, fine-tune
//! it on the chosen dialogues, train the two-stage reward model (Bradley–Terry, then a K-head
//! BRME), evaluate it on held-out pairs, then run reward-robust PPO: the four services start on
//! loopback ports (real gRPC, the code of the distributed deployment) and the orchestrator
//! drives them. PPO runs twice from the same SFT start and seed: standard RLHF (the BRME's
//! nominal head, λ = 1) and the reward-robust objective, so the summary can put their gold-free
//! signals side by side (proxy reward, the worst head, head disagreement, KL, length, replies).
//! Finally both policies answer held-out prompts, scored by the BRME.
//!
//! Stages whose output already exists in the run directory are reused, and PPO resumes from
//! its latest checkpoint, so an interrupted `make run` continues where it stopped.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use rrlhf_model::Arch;
use serde_json::{Value, json};

use crate::args::{LoraArgs, RuntimeArgs};
use crate::cmd_model::{ArchArg, SamplingArgs, SizeArg, init, load_with_tokenizer, sample};
use crate::cmd_rm::{DataArgs, EvalArgs, ScoringArgs, SplitArg, StageArg, TrainArgs};
use crate::cmd_sft::{SftArgs, sft, write_json};
use rrlhf_model::TextTokenizer;
use rrlhf_model::reward_model::RewardModel;
use rrlhf_model::scoring::{Overlong, RewardScorer};
use rrlhf_orchestrator::OrchestratorConfig;
use rrlhf_orchestrator::config::{PromptSettings, PromptSource};
use rrlhf_orchestrator::metrics::StepMetrics;
use rrlhf_orchestrator::run::RunStatus;
use rrlhf_robust::{Lambda, Strategy, UncertaintySet};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Preference data (HH-RLHF JSONL(.gz)).
    #[arg(
        long,
        default_value = "../shared/data/hh-rlhf/harmless-base-test.jsonl.gz"
    )]
    data: PathBuf,
    /// Run directory; every stage writes a sub-directory.
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "llama")]
    arch: ArchArg,
    #[arg(long, value_enum, default_value = "tiny")]
    size: SizeArg,
    #[arg(long, default_value_t = 2048)]
    vocab_size: usize,
    #[arg(long, default_value_t = 600)]
    sft_steps: usize,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    #[arg(long, default_value_t = 192)]
    max_len: usize,
    /// Optimiser steps of each reward-model stage.
    #[arg(long, default_value_t = 150)]
    rm_steps: usize,
    /// BRME heads K.
    #[arg(long, default_value_t = 5)]
    heads: i64,
    /// λ ∈ [0, 1] of the robust objective `tradeoff:λ` (PPO and the scores of the sample
    /// replies; default 0.4). With --config it replaces the λ of the config's strategy, and a
    /// strategy without a λ (`min`, …) is an error naming both.
    #[arg(long)]
    lambda: Option<Lambda>,
    /// Held-out prompts to answer at the end.
    #[arg(long, default_value_t = 3)]
    samples: usize,
    /// PPO steps (one experience batch each).
    #[arg(long, default_value_t = 12)]
    ppo_steps: usize,
    /// Samples per PPO experience batch.
    #[arg(long, default_value_t = 128)]
    ppo_batch: usize,
    /// Longest generated response during PPO, in tokens (default 32, or the config's).
    #[arg(long)]
    max_new_tokens: Option<u32>,
    /// No EOS before this many response tokens during PPO (its logit is masked out, so every
    /// step does at least this much work: benchmarks); default 0 (off), or the config's.
    #[arg(long)]
    min_new_tokens: Option<u32>,
    /// Orchestrator TOML for the PPO stage (sections run, prompts, sampling, objective, ppo,
    /// retry); the flags above override it and the endpoints are the embedded services.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Also serve the REST control API here (e.g. 127.0.0.1:8080) while PPO runs.
    #[arg(long)]
    rest: Option<String>,
    /// Let the services merge concurrent requests into shared batches (throughput on large
    /// devices). Off by default: each request is then its own batch, and PPO reproduces bit
    /// for bit — merged batches change floating-point summation order with arrival timing.
    #[arg(long)]
    merge_requests: bool,
    /// Skip the standard-RLHF run (the nominal head, λ = 1) that the summary compares the
    /// robust run with.
    #[arg(long)]
    no_standard: bool,
    /// PPO with LoRA adapters on the actor (SFT and the reward models still train fully); the
    /// actor's frozen base then serves the reference log-probs, so no reference model is loaded.
    #[command(flatten)]
    lora: LoraArgs,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

/// Whether `dir` already holds a finished stage's model; says so when it does.
fn reusable(dir: &Path, what: &str) -> bool {
    let done = dir.join("model.safetensors").exists() && dir.join(OUTCOME).exists();
    if done {
        eprintln!("      reusing the {what} in {}", dir.display());
    }
    done
}

/// Each trained stage leaves its outcome beside its model, so a reused stage can report it.
const OUTCOME: &str = "outcome.json";

fn save_outcome(dir: &Path, outcome: &impl serde::Serialize) -> Result<Value> {
    let v = serde_json::to_value(outcome)?;
    write_json(&dir.join(OUTCOME), &v)?;
    Ok(v)
}

fn load_outcome(dir: &Path) -> Result<Value> {
    let path = dir.join(OUTCOME);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

pub fn run(a: RunArgs) -> Result<()> {
    // The PPO stage's settings are built and checked before an hour of SFT and reward
    // modelling.
    let ppo_cfg = ppo_config(&a)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let (tok_dir, init_dir, sft_dir) = (
        a.out.join("tokenizer"),
        a.out.join("init"),
        a.out.join("sft"),
    );

    eprintln!(
        "[1/8] tokenizer: byte-level BPE ({} tokens) on {}",
        a.vocab_size,
        a.data.display()
    );
    let tok = if tok_dir.join("tokenizer.json").exists() {
        eprintln!("      reusing {}", tok_dir.display());
        TextTokenizer::load(&tok_dir)?
    } else {
        crate::cmd_tokenizer::train(&a.data, a.vocab_size, &tok_dir)?
    };

    let (arch, size) = (Arch::from(a.arch), a.size);
    let size_name = size.name();
    eprintln!("[2/8] model: random {} {size_name}", arch.hf_class());
    let model = if init_dir.join("model.safetensors").exists() {
        eprintln!("      reusing {}", init_dir.display());
        rrlhf_model::CausalLm::from_dir(&init_dir, a.runtime.placement()?)?
    } else {
        init(arch, size_name, &tok_dir, &init_dir, 2048, a.seed as i64)?
    };
    let params: usize = model
        .vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel())
        .sum();
    drop(model);

    eprintln!(
        "[3/8] sft: {} steps × {} examples on the chosen dialogues",
        a.sft_steps, a.batch_size
    );
    let sft_outcome = if reusable(&sft_dir, "SFT model") {
        load_outcome(&sft_dir)?
    } else {
        let sft_args = SftArgs {
            model: init_dir.clone(),
            data: a.data.clone(),
            out: sft_dir.clone(),
            steps: a.sft_steps,
            batch_size: a.batch_size,
            micro_batch_size: 0,
            activation_checkpointing: false,
            lr: a.lr,
            warmup_steps: a.sft_steps / 10,
            max_len: a.max_len,
            grad_clip: 1.0,
            eval_fraction: 0.05,
            eval_every: 0,
            seed: a.seed,
            lora: LoraArgs::default(),
            runtime: a.runtime.clone(),
        };
        save_outcome(&sft_dir, &sft(&sft_args, true)?)?
    };

    let (rm1_dir, brme_dir) = (a.out.join("rm-stage1"), a.out.join("rm-brme"));
    let rm_args = |stage, base: &Path, out: &Path| TrainArgs {
        steps: Some(a.rm_steps),
        max_len: a.max_len,
        seed: a.seed,
        heads: a.heads,
        ..TrainArgs::defaults(stage, base, &a.data, out, a.runtime.clone())
    };
    eprintln!(
        "[4/8] reward model stage 1: Bradley–Terry on the SFT backbone, {} steps",
        a.rm_steps
    );
    let rm1 = if reusable(&rm1_dir, "stage-1 reward model") {
        load_outcome(&rm1_dir)?
    } else {
        let o = crate::cmd_rm::train(&rm_args(StageArg::One, &sft_dir, &rm1_dir), true)?;
        save_outcome(&rm1_dir, &o)?
    };
    eprintln!(
        "[5/8] reward model stage 2: BRME with K = {} heads, {} steps",
        a.heads, a.rm_steps
    );
    let brme = if reusable(&brme_dir, "BRME") {
        load_outcome(&brme_dir)?
    } else {
        let o = crate::cmd_rm::train(&rm_args(StageArg::Two, &rm1_dir, &brme_dir), true)?;
        save_outcome(&brme_dir, &o)?
    };
    eprintln!("[6/8] reward model evaluation on the held-out pairs");
    let report = crate::cmd_rm::eval(&EvalArgs {
        model: brme_dir.clone(),
        data: DataArgs {
            data: a.data.clone(),
            min_rating_gap: 2.0,
            skip_malformed: false,
        },
        split: SplitArg::HeldOut,
        baseline: None,
        plots: Some(a.out.join("rm-plots")),
        json: false,
        scoring: ScoringArgs {
            batch_size: 32,
            max_len: a.max_len,
            runtime: a.runtime.clone(),
        },
    })?;

    let services = if a.lora.lora_rank > 0 {
        "three services on loopback (the LoRA actor's base is the reference)"
    } else {
        "four services on loopback"
    };
    let dirs = (sft_dir.as_path(), rm1_dir.as_path(), brme_dir.as_path());
    let standard = if a.no_standard {
        None
    } else {
        eprintln!(
            "[7/8] PPO from the SFT policy, {} steps × {} samples, {services}: first standard RLHF (nominal head)",
            a.ppo_steps, a.ppo_batch
        );
        let mut cfg = ppo_cfg.clone();
        cfg.run.id = "ppo-standard".into();
        cfg.objective.strategy = Strategy::Nominal;
        Some(ppo(&a, cfg, dirs, None)?)
    };
    eprintln!(
        "[7/8] reward-robust PPO ({}) from the same start and seed",
        ppo_cfg.objective.strategy
    );
    let ppo = ppo(&a, ppo_cfg, dirs, a.rest.as_deref())?;

    eprintln!(
        "[8/8] samples: the PPO policies answer {} held-out prompts, scored by the BRME",
        a.samples
    );
    let data = rrlhf_data::sft::load(&a.data)?;
    let (_, held_out) = rrlhf_data::split::train_test(data.examples, a.seed, 0.05);
    let prompts: Vec<String> = held_out
        .iter()
        .map(|e| e.prompt.clone())
        .filter(|p| p.len() < 400)
        .take(a.samples)
        .collect();
    let sampling = SamplingArgs {
        min_new_tokens: 0,
        max_new_tokens: 48,
        temperature: 0.7,
        top_k: 50,
        top_p: 0.95,
        seed: Some(a.seed),
    };
    let answer = |run: &PpoResult| -> Result<Vec<(String, String)>> {
        let (lm, tok) = load_with_tokenizer(&run.policy()?, a.runtime.placement()?)?;
        sample(&lm, &tok, &prompts, 1, &sampling)
    };
    let replies = answer(&ppo)?;
    let standard_replies = match &standard {
        Some(run) => answer(run)?,
        None => Vec::new(),
    };
    let scorer = RewardScorer {
        model: RewardModel::from_dir(&brme_dir, a.runtime.placement()?)?,
        tokenizer: TextTokenizer::load(&brme_dir)?,
        max_len: a.max_len,
        batch_size: 8,
        overlong: Overlong::Truncate,
    };
    let strategy = Strategy::Tradeoff {
        lambda: a.lambda.unwrap_or_else(default_lambda),
    };
    // `--samples 0` (benchmarks) skips the answers; the scorer refuses an empty batch.
    let score = |replies: &[(String, String)]| -> Result<Vec<_>> {
        if replies.is_empty() {
            return Ok(Vec::new());
        }
        Ok(scorer.score(replies, strategy, UncertaintySet::Mean, a.seed)?)
    };
    let scored = score(&replies)?;
    let standard_scored = score(&standard_replies)?;

    let summary = json!({
        "data": a.data,
        "tokenizer": {"vocab_size": tok.vocab_size(), "dir": tok_dir},
        "model": {"arch": arch.hf_class(), "size": size_name, "parameters": params},
        "sft": sft_outcome,
        "reward_model": {"stage1": rm1, "brme": brme, "eval": report},
        "ppo": {"dir": ppo.dir, "first": ppo.first, "last": ppo.last, "stopped_on_request": ppo.stopped},
        "ppo_standard": standard.as_ref().map(|s| json!({"dir": s.dir, "first": s.first, "last": s.last})),
        "samples": replies.iter().zip(&scored).map(|((p, r), s)| json!({
            "prompt": p, "reply": r, "heads_mu": s.heads.mu, "heads_sigma": s.heads.sigma,
            "summary": s.aggregated.summary, "reward": s.aggregated.reward, "strategy": strategy,
        })).collect::<Vec<_>>(),
        "standard_samples": standard_replies.iter().zip(&standard_scored).map(|((p, r), s)| json!({
            "prompt": p, "reply": r, "heads_mu": s.heads.mu, "heads_sigma": s.heads.sigma,
            "summary": s.aggregated.summary, "reward": s.aggregated.reward, "strategy": strategy,
        })).collect::<Vec<_>>(),
    });
    write_json(&a.out.join("summary.json"), &summary)?;

    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    println!("\n== rrlhf run: summary ==");
    println!(
        "model        {} {size_name}, {params} parameters, vocab {}",
        arch.hf_class(),
        tok.vocab_size()
    );
    println!(
        "sft          {} steps, {} train / {} held-out dialogues, {:.0}s",
        f(&sft_outcome, "steps"),
        f(&sft_outcome, "train_examples"),
        f(&sft_outcome, "eval_examples"),
        f(&sft_outcome, "seconds")
    );
    let (nll0, nll1) = (
        f(&sft_outcome, "initial_eval_loss"),
        f(&sft_outcome, "final_eval_loss"),
    );
    println!(
        "held-out NLL {nll0:.3} → {nll1:.3} nats/token (perplexity {:.0} → {:.0})",
        nll0.exp(),
        nll1.exp()
    );
    let pct = |k: &str| report.accuracy.get(k).map_or(f64::NAN, |x| x * 100.0);
    println!(
        "reward model {} held-out pairs: accuracy stage-1 {:.1}%, BRME nominal {:.1}%, mean {:.1}%, min {:.1}%",
        report.pairs,
        pct("stage1"),
        pct("nominal"),
        pct("mean"),
        pct("min")
    );
    crate::run_summary::print_ppo(
        standard.as_ref().map(|s| (&s.first, &s.last)),
        (&ppo.first, &ppo.last),
        a.ppo_batch,
    );
    if ppo.stopped {
        println!(
            "             (the robust run was stopped on request after step {} of {})",
            ppo.last.step, a.ppo_steps
        );
    }
    println!(
        "             report {}",
        ppo.dir.join("report.md").display()
    );
    crate::run_summary::print_replies(
        &replies,
        &scored,
        &standard_replies,
        &standard_scored,
        strategy,
    );
    println!("\nwritten: {}", a.out.join("summary.json").display());
    Ok(())
}

/// What the PPO stage leaves: its directory and the first and last step's metrics.
struct PpoResult {
    dir: PathBuf,
    first: StepMetrics,
    last: StepMetrics,
    /// Stopped on request (REST API or dashboard) before its last step.
    stopped: bool,
}

impl PpoResult {
    /// The actor of the run's latest checkpoint.
    fn policy(&self) -> Result<PathBuf> {
        let latest = std::fs::read_to_string(self.dir.join("checkpoints/latest"))?;
        Ok(self
            .dir
            .join("checkpoints")
            .join(latest.trim())
            .join("actor"))
    }
}

/// λ of the default objective `tradeoff:0.4`.
fn default_lambda() -> Lambda {
    Lambda::new(0.4).expect("0.4 is in [0, 1]")
}

/// Starts the four services on loopback and runs (or resumes) PPO with `cfg` in
/// `a.out/{cfg.run.id}`; `dirs` are the SFT policy, the stage-1 RM and the BRME.
fn ppo(
    a: &RunArgs,
    cfg: OrchestratorConfig,
    (sft_dir, rm1_dir, brme_dir): (&Path, &Path, &Path),
    rest: Option<&str>,
) -> Result<PpoResult> {
    let max_length = a.max_len.max(cfg.sampling.max_new_tokens as usize + 16);
    let info = crate::embedded_ppo::run(
        cfg,
        &crate::embedded_ppo::model_dirs(sft_dir, rm1_dir, brme_dir),
        &rrlhf_embedded::Options {
            actor_lora: a.lora.config(false)?,
            ..crate::embedded_ppo::options(max_length, &a.runtime, a.merge_requests)
        },
        None,
        rest,
        &[],
    )?;
    let steps = rrlhf_orchestrator::metrics::read_all(&info.dir.join("metrics.jsonl"))?;
    let (first, last) = match (steps.first(), steps.last()) {
        (Some(f), Some(l)) => (f.clone(), l.clone()),
        _ => anyhow::bail!("PPO wrote no metrics"),
    };
    Ok(PpoResult {
        dir: info.dir,
        first,
        last,
        stopped: info.status == RunStatus::Stopped,
    })
}

/// The orchestrator config of the PPO stage: `--config` (or the built-in defaults for the
/// embedded demo) with the flags applied; checked, so a bad combination fails before any
/// training starts.
fn ppo_config(a: &RunArgs) -> Result<OrchestratorConfig> {
    let mut cfg: OrchestratorConfig = rrlhf_runtime::load_config(a.config.as_deref(), &json!({}))?;
    cfg.run.id = "ppo".into();
    cfg.run.out_dir = a.out.clone();
    cfg.run.steps = a.ppo_steps;
    cfg.run.batch_size = a.ppo_batch;
    cfg.run.seed = a.seed;
    if a.config.is_none() {
        cfg.prompts = PromptSettings {
            source: PromptSource::Hh,
            path: Some(a.data.clone()),
            max_chars: 400,
        };
        cfg.objective.strategy = Strategy::Tradeoff {
            lambda: a.lambda.unwrap_or_else(default_lambda),
        };
        cfg.sampling.max_new_tokens = 32;
        cfg.run.checkpoint_every = 4;
        // Tiny models move slowly at LLM learning rates; these are sized for the default.
        cfg.ppo.actor.lr = 2e-4;
        cfg.ppo.critic.lr = 5e-4;
        cfg.ppo.kl = rrlhf_ppo::KlController::Fixed { beta: 0.02 };
    } else if let Some(l) = a.lambda {
        // The flag replaces the config's λ; a strategy without one cannot take it.
        cfg.objective.strategy = cfg.objective.strategy.with_lambda(l).map_err(|e| {
            anyhow::anyhow!(
                "--lambda {} conflicts with objective.strategy `{}` in {}: {e}",
                l.get(),
                cfg.objective.strategy,
                a.config.as_deref().unwrap_or(Path::new("")).display()
            )
        })?;
    }
    if let Some(n) = a.max_new_tokens {
        cfg.sampling.max_new_tokens = n;
    }
    if let Some(n) = a.min_new_tokens {
        cfg.sampling.min_new_tokens = n;
    }
    cfg.validate()?;
    Ok(cfg)
}
