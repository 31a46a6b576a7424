//! `rrlhf rm train|eval|calibrate|ensemble`: the two-stage reward model (Bradley–Terry, then
//! BRME), and deep ensembles of stage-1 models served as one K-head model.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use rrlhf_data::preference::{OnMalformed, PairData, PairOptions, load_pairs};
use rrlhf_model::reward_model::RewardModel;
use rrlhf_model::{ModelConfig, TextTokenizer};
use rrlhf_train::rm::{HeadData, HeadDiversity, RmConfig, split_pairs, train_stage1, train_stage2};
use rrlhf_train::rm_eval::{EvalOptions, EvalReport, calibrate, evaluate};

use crate::args::RuntimeArgs;
use crate::cmd_sft::write_json;

#[derive(Subcommand, Debug)]
pub enum RmCommand {
    /// Train a reward model: stage 1 (Bradley–Terry) or stage 2 (BRME).
    Train(TrainArgs),
    /// Evaluate a reward model on preference pairs (accuracy, coverage, margin, plots).
    Eval(EvalArgs),
    /// Measure a reward source's mean/std on a reference set and store them with the model.
    Calibrate(CalibrateArgs),
    /// Stack independently trained stage-1 models (a deep ensemble) into one K-head model that
    /// the reward service serves like a BRME (member 0 is the nominal head).
    Ensemble(EnsembleArgs),
}

#[derive(Args, Debug, Clone)]
pub struct EnsembleArgs {
    /// A stage-1 reward model; give K ≥ 2 of them, the nominal one first.
    #[arg(long = "member", required = true)]
    pub members: Vec<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Preference pairs: HH-RLHF, `{"prompt","chosen","rejected"}` or UltraFeedback JSONL(.gz).
    #[arg(long)]
    pub data: PathBuf,
    /// UltraFeedback: minimum rating gap for a pair (paper: 2).
    #[arg(long, default_value_t = 2.0)]
    pub min_rating_gap: f64,
    /// Skip and count malformed records instead of failing on the first.
    #[arg(long)]
    pub skip_malformed: bool,
}

impl DataArgs {
    pub fn load(&self) -> Result<PairData> {
        let opts = PairOptions {
            min_rating_gap: self.min_rating_gap,
            on_malformed: if self.skip_malformed {
                OnMalformed::Skip
            } else {
                OnMalformed::Error
            },
        };
        let data = load_pairs(&self.data, &opts).context("reading preference pairs")?;
        eprintln!(
            "{} pairs from {} (skipped: {:?})",
            data.pairs.len(),
            self.data.display(),
            data.skipped
        );
        Ok(data)
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageArg {
    #[value(name = "1")]
    One,
    #[value(name = "2")]
    Two,
}

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    #[arg(long, value_enum)]
    pub stage: StageArg,
    /// Stage 1: the SFT model to start from. Stage 2: the stage-1 reward model.
    #[arg(long)]
    pub base: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    #[arg(long)]
    pub out: PathBuf,
    /// Optimiser steps (default: from --epochs).
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long, default_value_t = 1.0)]
    pub epochs: f64,
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f64,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Pairs per forward/backward pass (0: the whole batch); gradients are accumulated into
    /// the same update, which bounds activation memory.
    #[arg(long, default_value_t = 0)]
    pub micro_batch_size: usize,
    /// Recompute each decoder layer's activations in backward instead of keeping them (less
    /// memory, one more forward pass).
    #[arg(long)]
    pub activation_checkpointing: bool,
    #[arg(long, default_value_t = 256)]
    pub max_len: usize,
    /// Share of pairs held out for validation and, by default, `rrlhf rm eval`.
    #[arg(long, default_value_t = 0.1)]
    pub eval_fraction: f64,
    #[arg(long, default_value_t = 50)]
    pub eval_every: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stage 2: number of BRME heads K.
    #[arg(long, default_value_t = 5, allow_negative_numbers = true)]
    pub heads: i64,
    /// Stage 2: scale α of the targets α(p̂ − ½).
    #[arg(long, default_value_t = 2.0, allow_negative_numbers = true)]
    pub alpha: f64,
    /// Stage 2: how pairs reach the heads: `partition` (each pair trains one head, the paper's
    /// BRME) or `bootstrap` (each head trains on its own resample of all pairs).
    #[arg(long, default_value = "partition")]
    pub head_data: HeadData,
    /// Stage 2: decoder layers each head owns, copied from the top of the stage-1 backbone
    /// (0: the heads share the whole backbone and differ only in their output rows).
    #[arg(long, default_value_t = 0)]
    pub tower_layers: usize,
    /// Stage 2: relative std of per-head noise added to the towers' starting weights.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub tower_init_noise: f64,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitArg {
    /// The pairs held out when the model was trained (same seed and fraction).
    HeldOut,
    /// Every pair of the file.
    All,
}

#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    #[arg(long, value_enum, default_value = "held-out")]
    pub split: SplitArg,
    /// Stage-1 RM to compare with (default: the BRME's stage-1 parent).
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Directory for the PNG plots (default: MODEL/eval).
    #[arg(long)]
    pub plots: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub scoring: ScoringArgs,
}

/// How a reward model is run over a data set.
#[derive(Args, Debug, Clone)]
pub struct ScoringArgs {
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Longer samples keep the prompt's tail and the response's head.
    #[arg(long, default_value_t = 256)]
    pub max_len: usize,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Args, Debug, Clone)]
pub struct CalibrateArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub scoring: ScoringArgs,
}

pub fn run(cmd: RmCommand) -> Result<()> {
    match cmd {
        RmCommand::Train(a) => train(&a, true).map(|_| ()),
        RmCommand::Eval(a) => {
            let report = eval(&a)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_report(&report);
            }
            Ok(())
        }
        RmCommand::Calibrate(a) => {
            let placement = a.scoring.runtime.placement()?;
            let pairs = a.data.load()?.pairs;
            let opts = EvalOptions {
                batch_size: a.scoring.batch_size,
                max_len: a.scoring.max_len,
                plots_dir: None,
                baseline: None,
            };
            let cal = calibrate(
                &a.model,
                &pairs,
                &a.data.data.display().to_string(),
                &opts,
                placement,
            )?;
            println!(
                "calibration of {}: mean {:.4}, std {:.4} over {} rewards → {}",
                a.model.display(),
                cal.mean,
                cal.std,
                cal.count,
                a.model.join("config.json").display()
            );
            Ok(())
        }
        RmCommand::Ensemble(a) => ensemble(&a),
    }
}

/// Assembles the deep ensemble and saves it with member 0's tokenizer.
pub fn ensemble(a: &EnsembleArgs) -> Result<()> {
    let members: Vec<&Path> = a.members.iter().map(PathBuf::as_path).collect();
    let tok = TextTokenizer::load(members[0])
        .with_context(|| format!("{} has no usable tokenizer", members[0].display()))?;
    let model = rrlhf_model::ensemble::assemble(&members, a.runtime.placement()?)?;
    model.save(&a.out)?;
    tok.save_to(&a.out)?;
    println!(
        "deep ensemble of {} stage-1 models → {} (nominal head: {})",
        members.len(),
        a.out.display(),
        members[0].display()
    );
    Ok(())
}

/// Trains one stage and writes `rm_summary.json` next to the checkpoint.
impl TrainArgs {
    /// A stage trained on `data` with the command's defaults (lr 5e-4, batch 16, 10% held out,
    /// K = 5, α = 2, seed 0); callers override what they choose.
    pub fn defaults(
        stage: StageArg,
        base: &Path,
        data: &Path,
        out: &Path,
        runtime: RuntimeArgs,
    ) -> Self {
        Self {
            stage,
            base: base.to_path_buf(),
            data: DataArgs {
                data: data.to_path_buf(),
                min_rating_gap: 2.0,
                skip_malformed: false,
            },
            out: out.to_path_buf(),
            steps: None,
            epochs: 1.0,
            lr: 5e-4,
            batch_size: 16,
            micro_batch_size: 0,
            activation_checkpointing: false,
            max_len: 256,
            eval_fraction: 0.1,
            eval_every: 50,
            seed: 0,
            heads: 5,
            alpha: 2.0,
            head_data: HeadData::Partition,
            tower_layers: 0,
            tower_init_noise: 0.0,
            runtime,
        }
    }
}

pub fn train(a: &TrainArgs, show_progress: bool) -> Result<rrlhf_train::rm::RmOutcome> {
    let placement = a.runtime.placement()?;
    ModelConfig::from_dir(&a.base)
        .with_context(|| format!("loading base model {}", a.base.display()))?;
    let tok = TextTokenizer::load(&a.base)
        .with_context(|| format!("base model {} has no usable tokenizer", a.base.display()))?;
    let pairs = a.data.load()?.pairs;
    let cfg = RmConfig {
        steps: a.steps,
        epochs: a.epochs,
        batch_size: a.batch_size,
        micro_batch_size: a.micro_batch_size,
        activation_checkpointing: a.activation_checkpointing,
        lr: a.lr,
        max_len: a.max_len,
        eval_fraction: a.eval_fraction,
        eval_every: a.eval_every,
        seed: a.seed,
        show_progress,
        heads: a.heads,
        alpha: a.alpha,
        diversity: HeadDiversity {
            data: a.head_data,
            tower_layers: a.tower_layers,
            tower_init_noise: a.tower_init_noise,
        },
        ..RmConfig::default()
    };
    let outcome = match a.stage {
        StageArg::One => train_stage1(&a.base, &tok, &a.data.data, pairs, &cfg, placement, &a.out)?,
        StageArg::Two => train_stage2(&a.base, &tok, &a.data.data, pairs, &cfg, placement, &a.out)?,
    };
    write_json(&a.out.join("rm_summary.json"), &outcome)?;
    println!(
        "rm stage {}: {} steps on {} pairs ({} validation): validation accuracy {:.3} → {:.3}, loss {:.4} → {:.4} in {:.0}s → {}",
        outcome.stage,
        outcome.steps,
        outcome.train_pairs,
        outcome.validation_pairs,
        outcome.initial_validation.accuracy,
        outcome.final_validation.accuracy,
        outcome.initial_validation.loss,
        outcome.final_validation.loss,
        outcome.seconds,
        a.out.display()
    );
    Ok(outcome)
}

/// Evaluates as configured, on the held-out split the model was trained with unless `--split all`.
pub fn eval(a: &EvalArgs) -> Result<EvalReport> {
    let placement = a.scoring.runtime.placement()?;
    let cfg = ModelConfig::from_dir(&a.model)
        .with_context(|| format!("loading {}", a.model.display()))?;
    let meta = RewardModel::meta_of(&cfg, &a.model)?;
    let pairs = a.data.load()?.pairs;
    let pairs = match (a.split, &meta.split) {
        (SplitArg::All, _) => pairs,
        (SplitArg::HeldOut, Some(s)) => {
            if !same_file(Path::new(&s.data), &a.data.data) {
                bail!(
                    "{} was trained on {}, so it has no held-out part of {}: pass --split all",
                    a.model.display(),
                    s.data,
                    a.data.data.display()
                );
            }
            split_pairs(pairs, s.seed, s.eval_fraction).1
        }
        (SplitArg::HeldOut, None) => bail!(
            "{} records no training split: pass --split all",
            a.model.display()
        ),
    };
    let opts = EvalOptions {
        batch_size: a.scoring.batch_size,
        max_len: a.scoring.max_len,
        plots_dir: Some(a.plots.clone().unwrap_or_else(|| a.model.join("eval"))),
        baseline: a.baseline.clone(),
    };
    Ok(evaluate(&a.model, &pairs, &opts, placement)?)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

fn print_report(r: &EvalReport) {
    println!(
        "reward model {} ({:?}, K = {}) on {} pairs",
        r.model, r.kind, r.heads, r.pairs
    );
    println!("\n{:<16} {:>9}", "accuracy", "");
    for (name, acc) in &r.accuracy {
        println!("  {name:<14} {:>8.1}%", acc * 100.0);
    }
    if !r.per_category.is_empty() {
        println!("\nper category:");
        for (cat, c) in &r.per_category {
            let accs: Vec<String> = c
                .accuracy
                .iter()
                .map(|(n, a)| format!("{n} {:.1}%", a * 100.0))
                .collect();
            println!("  {cat} ({} pairs): {}", c.pairs, accs.join(", "));
        }
    }
    println!(
        "\n{:<14} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "coverage", "chosen rng", "chosen std", "rej. rng", "rej. std", "norm. margin"
    );
    for (name, c) in &r.coverage {
        let m = r.normalized_margin.get(name).map_or(f64::NAN, |m| m.mean);
        println!(
            "  {name:<12} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>12.3}",
            c.chosen.range, c.chosen.std, c.rejected.range, c.rejected.std, m
        );
    }
    let freq: Vec<String> = r
        .nominal_head_frequency
        .iter()
        .map(|f| format!("{:.0}%", f * 100.0))
        .collect();
    println!("\nnominal head frequency: {}", freq.join(" "));
    let sig: Vec<String> = r
        .mean_sigma_per_head
        .iter()
        .map(|s| format!("{s:.3}"))
        .collect();
    println!("mean σ per head:        {}", sig.join(" "));
    if let Some(d) = &r.disagreement {
        println!(
            "head disagreement (std over heads of the margin): {:.4} overall, {:.4} where the \
             nominal head is wrong ({:.1}% of pairs), {:.4} where it is right; AUROC of \
             disagreement for a wrong nominal ranking: {}",
            d.mean,
            d.mean_when_wrong,
            d.nominal_wrong * 100.0,
            d.mean_when_right,
            d.auroc.map_or("n/a".into(), |a| format!("{a:.3}"))
        );
    }
    for (name, path) in &r.plots {
        println!("plot {name}: {path}");
    }
}
