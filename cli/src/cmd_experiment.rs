//! `rrlhf experiment overopt`: the gold-reward testbed. A hidden gold reward labels pairs of
//! SFT samples through a noisy annotator (~70% agreement); a BRME trained on those labels is
//! the proxy; PPO runs through the real services and orchestrator for every condition (λ sweep,
//! min/max/mean, stochastic controls) and seed, tracking gold and proxy every step; the runs
//! become the paper's tables (see `rrlhf_overopt::tables`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use clap::{Args, Subcommand};
use rrlhf_model::TextTokenizer;
use rrlhf_orchestrator::OrchestratorConfig;
use rrlhf_orchestrator::config::{PromptSettings, PromptSource};
use rrlhf_overopt::tables::{self, Curve, Point};
use rrlhf_overopt::{annotator, gold};
use rrlhf_robust::Strategy;
use serde_json::json;

use crate::args::RuntimeArgs;
use crate::cmd_model::{SamplingArgs, load_with_tokenizer, sample};
use crate::cmd_rm::{StageArg, TrainArgs};
use crate::cmd_sft::write_json;

#[derive(Subcommand, Debug)]
pub enum ExperimentCommand {
    /// Reward over-optimisation on a gold-reward testbed: standard vs reward-robust PPO.
    Overopt(OveroptArgs),
}

#[derive(Args, Debug, Clone)]
pub struct OveroptArgs {
    /// The SFT policy (with its tokenizer), e.g. `runs/demo/sft` from `make run`.
    #[arg(long, default_value = "runs/demo/sft")]
    sft: PathBuf,
    /// Prompts (HH-RLHF JSONL(.gz)).
    #[arg(
        long,
        default_value = "../shared/data/hh-rlhf/harmless-base-test.jsonl.gz"
    )]
    data: PathBuf,
    #[arg(long, default_value = "runs/overopt")]
    out: PathBuf,
    /// Annotated pairs the proxy is trained on.
    #[arg(long, default_value_t = 1500)]
    pairs: usize,
    /// The annotator's target agreement with gold.
    #[arg(long, default_value_t = 0.7)]
    agreement: f64,
    #[arg(long, default_value_t = 5)]
    heads: i64,
    /// Optimiser steps of each reward-model stage.
    #[arg(long, default_value_t = 300)]
    rm_steps: usize,
    /// Aggregation strategies to compare (`nominal` is standard RLHF, `min` is λ = 0).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "nominal,tradeoff:0.8,tradeoff:0.6,tradeoff:0.4,tradeoff:0.2,min,mean,max,random,random_min,constant"
    )]
    conditions: Vec<Strategy>,
    /// Seeds per condition (paired: a seed's conditions share prompts and sampling seeds).
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// PPO steps per run.
    #[arg(long, default_value_t = 40)]
    steps: usize,
    /// The "early" step of the tables (the late one is the last).
    #[arg(long, default_value_t = 15)]
    early_step: usize,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[arg(long, default_value_t = 24)]
    max_new_tokens: u32,
    #[arg(long, default_value_t = 2e-4)]
    actor_lr: f32,
    #[arg(long, default_value_t = 0.02)]
    beta: f64,
    #[arg(long, default_value_t = 192)]
    max_len: usize,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub fn run(cmd: ExperimentCommand) -> Result<()> {
    match cmd {
        ExperimentCommand::Overopt(a) => overopt(&a),
    }
}

/// Directories of the proxy reward models.
struct Proxy {
    stage1: PathBuf,
    brme: PathBuf,
}

fn overopt(a: &OveroptArgs) -> Result<()> {
    anyhow::ensure!(
        a.sft.join("config.json").exists(),
        "--sft: {} is not a model directory (run `make run` first, or pass --sft)",
        a.sft.display()
    );
    anyhow::ensure!(
        a.early_step >= 1 && a.early_step <= a.steps,
        "--early-step: must be in 1..=--steps"
    );
    std::fs::create_dir_all(&a.out)?;
    let proxy = build_proxy(a)?;
    let mut curves = Vec::new();
    for seed in 0..a.seeds {
        for &condition in &a.conditions {
            eprintln!("[ppo] {condition}, seed {seed}");
            curves.push(ppo_run(a, &proxy, condition, seed)?);
        }
    }
    let t = tables::build(&curves, a.early_step, a.steps, "nominal");
    tables::plots(&a.out, &curves)?;
    let md = tables::markdown(&t);
    write_json(
        &a.out.join("overopt.json"),
        &json!({ "tables": t, "curves": curves }),
    )?;
    std::fs::write(a.out.join("overopt.md"), &md)?;
    println!(
        "{md}\nwritten: {}/overopt.{{md,json}}, gold.png, proxy.png, kl.png",
        a.out.display()
    );
    Ok(())
}

/// Samples pairs from the SFT policy, labels them with the noisy annotator, trains the
/// two-stage BRME on the labels; reused when already built.
fn build_proxy(a: &OveroptArgs) -> Result<Proxy> {
    let dir = a.out.join("proxy");
    let proxy = Proxy {
        stage1: dir.join("rm-stage1"),
        brme: dir.join("rm-brme"),
    };
    if proxy.brme.join("model.safetensors").exists() {
        eprintln!("[proxy] reusing {}", proxy.brme.display());
        return Ok(proxy);
    }
    std::fs::create_dir_all(&dir)?;
    let data = rrlhf_data::sft::load(&a.data)?;
    let mut prompts: Vec<String> = data
        .examples
        .into_iter()
        .map(|e| e.prompt)
        .filter(|p| !p.is_empty() && p.len() <= 400)
        .collect();
    prompts.truncate(a.pairs);
    eprintln!(
        "[proxy] sampling 2 responses to each of {} prompts from the SFT policy",
        prompts.len()
    );
    let (lm, tok): (rrlhf_model::CausalLm, TextTokenizer) =
        load_with_tokenizer(&a.sft, a.runtime.placement()?)?;
    let sampling = SamplingArgs {
        min_new_tokens: 0,
        max_new_tokens: a.max_new_tokens as usize,
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        seed: Some(7),
    };
    let mut samples = Vec::new();
    for chunk in prompts.chunks(128) {
        samples.extend(sample(&lm, &tok, chunk, 2, &sampling)?);
    }
    drop(lm);
    // (prompt, response) twice per prompt: consecutive samples share their prompt.
    type Sampled = (String, String);
    let pairs: Vec<(&Sampled, &Sampled)> = samples.chunks(2).map(|c| (&c[0], &c[1])).collect();
    let golds: Vec<(f32, f32)> = pairs
        .iter()
        .map(|(x, y)| (gold::gold(&x.1), gold::gold(&y.1)))
        .collect();
    let (labels, tau, realised) = annotator::label(&golds, a.agreement, 11)?;
    let mut lines = String::new();
    for ((x, y), l) in pairs.iter().zip(&labels) {
        let Some(l) = l else { continue };
        let (chosen, rejected) = if l.first_preferred {
            (&x.1, &y.1)
        } else {
            (&y.1, &x.1)
        };
        lines.push_str(&serde_json::to_string(
            &json!({"prompt": x.0, "chosen": chosen, "rejected": rejected}),
        )?);
        lines.push('\n');
    }
    let prefs = dir.join("prefs.jsonl");
    std::fs::write(&prefs, lines)?;
    let all_gold: Vec<f64> = golds
        .iter()
        .flat_map(|(x, y)| [*x as f64, *y as f64])
        .collect();
    let labelled = labels.iter().flatten().count();
    write_json(
        &dir.join("annotation.json"),
        &json!({
            "pairs": pairs.len(), "labelled": labelled, "tau": tau, "agreement": realised,
            "sft_gold_mean": all_gold.iter().sum::<f64>() / all_gold.len().max(1) as f64,
        }),
    )?;
    eprintln!(
        "[proxy] {labelled} labelled pairs (τ = {tau:.3}, agreement with gold {:.1}%); training the BRME",
        realised * 100.0
    );
    let train = |stage, base: &Path, out: &Path| TrainArgs {
        steps: Some(a.rm_steps),
        max_len: a.max_len,
        eval_every: 100,
        heads: a.heads,
        ..TrainArgs::defaults(stage, base, &prefs, out, a.runtime.clone())
    };
    crate::cmd_rm::train(&train(StageArg::One, &a.sft, &proxy.stage1), true)?;
    crate::cmd_rm::train(&train(StageArg::Two, &proxy.stage1, &proxy.brme), true)?;
    Ok(proxy)
}

/// One PPO run of `condition` and `seed` through freshly started services; resumed if a
/// previous invocation left it unfinished, reused if finished.
fn ppo_run(a: &OveroptArgs, proxy: &Proxy, condition: Strategy, seed: u64) -> Result<Curve> {
    let id = format!("{}-s{seed}", condition.to_string().replace(':', "_"));
    let runs = a.out.join("runs");
    let metrics_path = runs.join(&id).join("metrics.jsonl");
    let done = rrlhf_orchestrator::metrics::read_all(&metrics_path)?;
    if done.len() < a.steps {
        let mut cfg = OrchestratorConfig::default();
        cfg.run.id = id.clone();
        cfg.run.out_dir = runs.clone();
        cfg.run.steps = a.steps;
        cfg.run.batch_size = a.batch;
        cfg.run.seed = seed;
        cfg.run.checkpoint_every = 10;
        cfg.run.keep_checkpoints = 1;
        cfg.prompts = PromptSettings {
            source: PromptSource::Hh,
            path: Some(a.data.clone()),
            max_chars: 400,
        };
        cfg.objective.strategy = condition;
        cfg.sampling.max_new_tokens = a.max_new_tokens;
        cfg.ppo.actor.lr = a.actor_lr;
        cfg.ppo.critic.lr = 5e-4;
        cfg.ppo.kl = rrlhf_ppo::KlController::Fixed { beta: a.beta };
        crate::embedded_ppo::run(
            cfg,
            &crate::embedded_ppo::model_dirs(&a.sft, &proxy.stage1, &proxy.brme),
            &crate::embedded_ppo::options(a.max_len, &a.runtime, false),
            Some(Arc::new(|_prompt: &str, response: &str| {
                gold::gold(response)
            })),
            None,
        )?;
    }
    let points = rrlhf_orchestrator::metrics::read_all(&metrics_path)?
        .into_iter()
        .map(|m| Point {
            step: m.step,
            gold: m.gold.unwrap_or(f32::NAN),
            proxy: m.rewards.nominal,
            aggregated: m.rewards.aggregated,
            kl: m.kl,
            length: m.response_length,
        })
        .collect();
    Ok(Curve {
        condition: condition.to_string(),
        seed,
        points,
    })
}
