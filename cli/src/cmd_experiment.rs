//! `rrlhf experiment overopt`: the gold-reward testbed. A hidden gold reward labels pairs of
//! SFT samples through a noisy annotator (~70% agreement); reward models trained on those labels
//! are the proxies — a fresh annotation sample and fresh proxies for every seed
//! ([`crate::overopt_proxy`]). PPO runs through the real services and orchestrator for every
//! condition (a proxy and an aggregation strategy) and seed, tracking gold, proxy, KL and head
//! disagreement every step; the runs become the paper's tables, comparisons at a shared KL
//! budget and gold-against-√KL plots (see `rrlhf_overopt::{tables, budget}`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::{Args, Subcommand};
use rrlhf_orchestrator::OrchestratorConfig;
use rrlhf_orchestrator::config::{PromptSettings, PromptSource};
use rrlhf_overopt::tables::{self, Curve, Point};
use rrlhf_overopt::{budget, gold};
use rrlhf_robust::Strategy;
use serde_json::json;

use crate::args::RuntimeArgs;
use crate::cmd_sft::write_json;
use crate::overopt_proxy::{self, Proxy, ProxyKind};

#[derive(Subcommand, Debug)]
pub enum ExperimentCommand {
    /// Reward over-optimisation on a gold-reward testbed: standard vs reward-robust PPO.
    Overopt(OveroptArgs),
}

/// What a run optimises: a proxy and how its heads are aggregated (`diverse/tradeoff:0.4`;
/// a bare strategy means the paper's `brme`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Condition {
    pub proxy: ProxyKind,
    pub strategy: Strategy,
}

impl std::str::FromStr for Condition {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (proxy, strategy) = match s.split_once('/') {
            Some((p, st)) => (p.parse()?, st),
            None => (ProxyKind::Brme, s),
        };
        let strategy: Strategy = strategy.parse().map_err(|e| format!("{s}: {e}"))?;
        if proxy == ProxyKind::Single && !matches!(strategy, Strategy::Nominal) {
            return Err(format!(
                "{s}: the single RM has one head: use single/nominal"
            ));
        }
        Ok(Self { proxy, strategy })
    }
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.proxy.as_str(), self.strategy)
    }
}

/// The testbed's default conditions: standard RLHF (the diverse BRME's nominal head, and the
/// single RM), the λ sweep, min, mean and UWO on the diverse BRME, the deep ensemble under
/// mean, UWO and λ = 0.4, the paper's BRME at λ = 0.4, and λ = 0.4 over the diverse BRME and
/// the ensemble fused as two calibrated reward services. UWO's c = 5: with head stds of
/// 0.03–0.2 on this proxy's scale, c·variance is then comparable to the std itself (c = 1
/// would make UWO the mean).
const DEFAULT_CONDITIONS: &str = "diverse/nominal,diverse/tradeoff:0.8,diverse/tradeoff:0.6,\
diverse/tradeoff:0.4,diverse/tradeoff:0.2,diverse/min,diverse/mean,diverse/uwo:5,single/nominal,\
ensemble/mean,ensemble/uwo:5,ensemble/tradeoff:0.4,brme/tradeoff:0.4,fused/tradeoff:0.4";

/// Head-to-head comparisons reported besides the paired columns against standard RLHF.
const CONTRASTS: [(&str, &str); 8] = [
    ("diverse/tradeoff:0.4", "diverse/mean"),
    ("diverse/min", "diverse/mean"),
    ("diverse/uwo:5", "diverse/mean"),
    ("ensemble/mean", "diverse/mean"),
    ("ensemble/tradeoff:0.4", "ensemble/mean"),
    ("ensemble/tradeoff:0.4", "diverse/tradeoff:0.4"),
    ("diverse/tradeoff:0.4", "brme/tradeoff:0.4"),
    ("single/nominal", "diverse/nominal"),
];

#[derive(Args, Debug, Clone)]
pub struct OveroptArgs {
    /// The SFT policy (with its tokenizer), e.g. `runs/demo/sft` from `make run`.
    #[arg(long, default_value = "runs/demo/sft")]
    pub sft: PathBuf,
    /// Prompts (HH-RLHF JSONL(.gz)).
    #[arg(
        long,
        default_value = "../shared/data/hh-rlhf/harmless-base-test.jsonl.gz"
    )]
    pub data: PathBuf,
    #[arg(long, default_value = "runs/overopt")]
    pub out: PathBuf,
    /// Annotated pairs each seed's proxies are trained on.
    #[arg(long, default_value_t = 800)]
    pub pairs: usize,
    /// Further pairs per seed, labelled by gold, that the proxies are evaluated on.
    #[arg(long, default_value_t = 300)]
    pub heldout: usize,
    /// The annotator's target agreement with gold.
    #[arg(long, default_value_t = 0.7)]
    pub agreement: f64,
    /// K: heads of the BRMEs and members of the deep ensemble.
    #[arg(long, default_value_t = 5)]
    pub heads: i64,
    /// Optimiser steps of each reward model.
    #[arg(long, default_value_t = 100)]
    pub rm_steps: usize,
    /// The diverse BRME: decoder layers each head owns.
    #[arg(long, default_value_t = 1)]
    pub tower_layers: usize,
    /// The diverse BRME: relative noise on the towers' starting weights.
    #[arg(long, default_value_t = 0.1)]
    pub tower_init_noise: f64,
    /// Conditions `proxy/strategy` (proxy: single, brme, diverse, ensemble, fused); the first is
    /// standard RLHF, which the paired columns compare with.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_CONDITIONS)]
    pub conditions: Vec<Condition>,
    /// Seeds (paired: a seed's conditions share its proxies, prompts and sampling seeds).
    #[arg(long, default_value_t = 10)]
    pub seeds: u64,
    /// PPO steps per run.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// The "early" step of the tables (the late one is the last).
    #[arg(long, default_value_t = 8)]
    pub early_step: usize,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[arg(long, default_value_t = 24)]
    pub max_new_tokens: u32,
    #[arg(long, default_value_t = 3e-4)]
    pub actor_lr: f32,
    /// The KL coefficient, shared by every condition (the starting one with --kl-target).
    #[arg(long, default_value_t = 0.02)]
    pub beta: f64,
    /// Steer every run's KL to this target (nats per sequence) with the adaptive controller
    /// instead of a fixed β: proxies of different reward scales then spend the same KL budget.
    #[arg(long)]
    pub kl_target: Option<f64>,
    /// The adaptive controller's horizon in samples (with --kl-target); the default, one
    /// batch, lets β move by up to 20% a step.
    #[arg(long)]
    pub kl_horizon: Option<f64>,
    /// Where the per-seed proxies live (default: OUT/proxy); another testbed's, to run new
    /// conditions on the same proxies.
    #[arg(long)]
    pub proxies: Option<PathBuf>,
    #[arg(long, default_value_t = 192)]
    pub max_len: usize,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

impl OveroptArgs {
    /// Where the per-seed proxies live: `--proxies`, or OUT/proxy.
    fn proxies_root(&self) -> PathBuf {
        self.proxies
            .clone()
            .unwrap_or_else(|| self.out.join("proxy"))
    }

    /// The directory of seed `seed`'s proxies.
    pub fn proxy_dir(&self, seed: u64) -> PathBuf {
        self.proxies_root().join(format!("s{seed}"))
    }

    /// The KL controller of every run.
    fn kl(&self) -> rrlhf_ppo::KlController {
        match self.kl_target {
            None => rrlhf_ppo::KlController::Fixed { beta: self.beta },
            Some(target) => rrlhf_ppo::KlController::Adaptive {
                beta: self.beta,
                target,
                horizon: self.kl_horizon.unwrap_or(self.batch as f64),
            },
        }
    }
}

pub fn run(cmd: ExperimentCommand) -> Result<()> {
    match cmd {
        ExperimentCommand::Overopt(a) => overopt(&a),
    }
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
    anyhow::ensure!(!a.conditions.is_empty(), "--conditions: name at least one");
    std::fs::create_dir_all(&a.out)?;
    write_json(
        &a.out.join("testbed.json"),
        &json!({
            "sft": a.sft, "data": a.data, "pairs": a.pairs, "heldout": a.heldout,
            "agreement": a.agreement, "heads": a.heads, "rm_steps": a.rm_steps,
            "tower_layers": a.tower_layers, "tower_init_noise": a.tower_init_noise,
            "conditions": a.conditions.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "seeds": a.seeds, "steps": a.steps, "batch": a.batch,
            "max_new_tokens": a.max_new_tokens, "actor_lr": a.actor_lr, "beta": a.beta,
            "kl": a.kl(), "proxies": a.proxies_root(),
        }),
    )?;
    let mut kinds: Vec<ProxyKind> = a.conditions.iter().map(|c| c.proxy).collect();
    kinds.sort();
    kinds.dedup();
    let mut curves = Vec::new();
    for seed in 0..a.seeds {
        let proxy = overopt_proxy::build(a, seed, &kinds)?;
        for &condition in &a.conditions {
            eprintln!("[ppo] {condition}, seed {seed}");
            curves.push(ppo_run(a, &proxy, condition, seed)?);
        }
    }
    report(a, &curves)
}

/// Tables, plots and the proxies' evaluation from every finished run.
fn report(a: &OveroptArgs, curves: &[Curve]) -> Result<()> {
    let standard = a.conditions[0].to_string();
    let mut t = tables::build(curves, a.early_step, a.steps, &standard);
    t.contrasts = CONTRASTS
        .iter()
        .filter_map(|(x, y)| tables::contrast(curves, x, y, a.steps))
        .collect();
    let matched = budget::matched(curves, &standard);
    tables::plots(&a.out, curves)?;
    budget::sqrt_kl_plots(&a.out, curves)?;
    let evals = proxy_evals(a)?;
    let mut md = tables::markdown(&t);
    md.push_str(&budget::markdown(&matched));
    md.push_str(&evals_markdown(&evals));
    md.push_str(&disagreement_markdown(curves));
    write_json(
        &a.out.join("overopt.json"),
        &json!({ "tables": t, "matched_kl": matched, "proxies": evals, "curves": curves }),
    )?;
    rrlhf_model::fsio::write_atomic(&a.out.join("overopt.md"), md.as_bytes())?;
    println!(
        "{md}\nwritten: {}/overopt.{{md,json}}, gold.png, proxy.png, kl.png, gold-sqrt-kl.png, proxy-sqrt-kl.png",
        a.out.display()
    );
    Ok(())
}

/// Every seed's `eval.json`, by proxy.
fn proxy_evals(a: &OveroptArgs) -> Result<Vec<(u64, serde_json::Value)>> {
    let mut out = Vec::new();
    for seed in 0..a.seeds {
        let path = a.proxy_dir(seed).join("eval.json");
        if let Ok(bytes) = std::fs::read(&path) {
            out.push((seed, serde_json::from_slice(&bytes)?));
        }
    }
    Ok(out)
}

/// Mean ± s.e. over seeds of each proxy's held-out (gold-labelled) measures.
fn evals_markdown(evals: &[(u64, serde_json::Value)]) -> String {
    use std::fmt::Write as _;
    let mut md = String::from(
        "\n### The proxies on held-out pairs labelled by gold (mean ± s.e. over seeds)\n\n\
         | proxy | K | nominal accuracy | mean accuracy | disagreement (std of margins) | where nominal is wrong / right | AUROC of disagreement for a wrong nominal | scoring time (s) |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for kind in ProxyKind::ALL {
        let get = |f: &dyn Fn(&serde_json::Value) -> Option<f64>| -> Vec<f64> {
            evals
                .iter()
                .filter_map(|(_, e)| f(e.get(kind.as_str())?))
                .collect()
        };
        let acc = get(&|e| e["accuracy_nominal"].as_f64());
        if acc.is_empty() {
            continue;
        }
        let ms = |v: Vec<f64>| -> String {
            if v.is_empty() {
                return "—".into();
            }
            let (m, se) = rrlhf_robust::stats::mean_se(&v);
            format!("{m:.3} ± {se:.3}")
        };
        let heads = get(&|e| e["heads"].as_f64())
            .first()
            .copied()
            .unwrap_or(1.0);
        let d = |k: &'static str| get(&move |e| e["disagreement"][k].as_f64());
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} / {} | {} | {} |",
            kind.as_str(),
            heads,
            ms(acc),
            ms(get(&|e| e["accuracy_mean"].as_f64())),
            ms(d("mean")),
            ms(d("mean_when_wrong")),
            ms(d("mean_when_right")),
            ms(d("auroc")),
            ms(get(&|e| e["score_secs"].as_f64())),
        );
    }
    md
}

/// Head disagreement during PPO and step cost, per condition (mean over seeds and steps).
fn disagreement_markdown(curves: &[Curve]) -> String {
    use std::fmt::Write as _;
    let mut md = String::from(
        "\n### During PPO: head disagreement and cost per step (mean over seeds and steps)\n\n\
         | condition | std over heads | step time (s) | scoring tail (s) |\n|---|---|---|---|\n",
    );
    // Conditions in the order they ran.
    let mut seen = std::collections::BTreeSet::new();
    for name in curves.iter().map(|c| c.condition.as_str()) {
        if !seen.insert(name) {
            continue;
        }
        let points: Vec<&Point> = curves
            .iter()
            .filter(|c| c.condition == name)
            .flat_map(|c| &c.points)
            .collect();
        let n = points.len().max(1) as f64;
        let mean = |f: &dyn Fn(&Point) -> f64| points.iter().map(|p| f(p)).sum::<f64>() / n;
        let _ = writeln!(
            md,
            "| {name} | {:.4} | {:.2} | {:.3} |",
            mean(&|p| p.disagreement as f64),
            mean(&|p| p.step_secs),
            mean(&|p| p.score_tail_secs)
        );
    }
    md
}

/// One PPO run of `condition` and `seed` through freshly started services; resumed if a
/// previous invocation left it unfinished, reused if finished.
fn ppo_run(a: &OveroptArgs, proxy: &Proxy, condition: Condition, seed: u64) -> Result<Curve> {
    let id = format!(
        "{}-{}-s{seed}",
        condition.proxy.as_str(),
        condition.strategy.to_string().replace(':', "_")
    );
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
        cfg.run.checkpoint_every = 8;
        cfg.run.keep_checkpoints = 1;
        cfg.prompts = PromptSettings {
            source: PromptSource::Hh,
            path: Some(a.data.clone()),
            max_chars: 400,
        };
        cfg.objective.strategy = condition.strategy;
        cfg.sampling.max_new_tokens = a.max_new_tokens;
        cfg.ppo.actor.lr = a.actor_lr;
        cfg.ppo.critic.lr = 5e-4;
        cfg.ppo.kl = a.kl();
        let mut extra = Vec::new();
        if condition.proxy == ProxyKind::Fused {
            let [main, second] = proxy.fusion()?;
            cfg.endpoints.reward_name = Some("diverse".into());
            cfg.endpoints.reward_calibration = Some(main);
            extra.push(crate::embedded_ppo::ExtraReward {
                name: "ensemble".into(),
                model: proxy.model(ProxyKind::Ensemble),
                calibration: Some(second),
            });
        }
        crate::embedded_ppo::run(
            cfg,
            &crate::embedded_ppo::model_dirs(&a.sft, &proxy.stage1, &proxy.model(condition.proxy)),
            &crate::embedded_ppo::options(a.max_len, &a.runtime, false),
            Some(Arc::new(|_prompt: &str, response: &str| {
                gold::gold(response)
            })),
            None,
            &extra,
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
            disagreement: m.rewards.head_disagreement,
            step_secs: m.step_secs,
            score_tail_secs: m.score_tail_secs,
        })
        .collect();
    Ok(Curve {
        condition: condition.to_string(),
        seed,
        points,
    })
}
