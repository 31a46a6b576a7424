//! The end-of-run report: PNG plots of the per-step metrics (rewards per head and aggregated,
//! KL, response length; for fused runs each reward source) and `report.md`, a short summary of
//! the first and last steps.

use std::fmt::Write as _;
use std::path::Path;

use rrlhf_plot::{Series, lines};

use crate::config::OrchestratorConfig;
use crate::error::{OrchestratorError, Result};
use crate::metrics::StepMetrics;
use crate::sources::SourceStats;

pub fn write(dir: &Path, cfg: &OrchestratorConfig, steps: &[StepMetrics]) -> Result<()> {
    if steps.is_empty() {
        return Err(OrchestratorError::invalid(
            "report",
            format!("no steps were recorded in {}", dir.display()),
        ));
    }
    let plots = dir.join("plots");
    std::fs::create_dir_all(&plots)
        .map_err(|e| OrchestratorError::io(format!("report: creating {}", plots.display()), e))?;
    let curve = |f: &dyn Fn(&StepMetrics) -> f64| -> Vec<(f64, f64)> {
        steps.iter().map(|m| (m.step as f64, f(m))).collect()
    };
    let k = steps[0].rewards.head_means.len();
    let heads: Vec<(String, Vec<(f64, f64)>)> = (0..k)
        .map(|h| {
            (
                format!("head {h} μ"),
                curve(&|m| m.rewards.head_means.get(h).copied().unwrap_or(f32::NAN) as f64),
            )
        })
        .collect();
    let (agg, nominal, min) = (
        curve(&|m| m.rewards.aggregated as f64),
        curve(&|m| m.rewards.nominal as f64),
        curve(&|m| m.rewards.min as f64),
    );
    let mut series = vec![
        Series {
            label: "aggregated (trained on)",
            points: &agg,
        },
        Series {
            label: "nominal",
            points: &nominal,
        },
        Series {
            label: "min over heads",
            points: &min,
        },
    ];
    series.extend(heads.iter().map(|(l, p)| Series {
        label: l,
        points: p,
    }));
    lines(
        &plots.join("rewards.png"),
        "Rewards per step",
        "step",
        "mean reward",
        &series,
    )
    .map_err(OrchestratorError::Report)?;
    let (kl, beta) = (curve(&|m| m.kl as f64), curve(&|m| m.beta));
    lines(
        &plots.join("kl.png"),
        "KL to the reference",
        "step",
        "nats per sequence",
        &[
            Series {
                label: "KL",
                points: &kl,
            },
            Series {
                label: "β",
                points: &beta,
            },
        ],
    )
    .map_err(OrchestratorError::Report)?;
    let len = curve(&|m| m.response_length as f64);
    lines(
        &plots.join("length.png"),
        "Response length",
        "step",
        "tokens",
        &[Series {
            label: "mean length",
            points: &len,
        }],
    )
    .map_err(OrchestratorError::Report)?;

    let (first, last) = (&steps[0], &steps[steps.len() - 1]);
    let mut md = String::new();
    let _ = writeln!(md, "# Run `{}`\n", cfg.run.id);
    let _ = writeln!(
        md,
        "{} PPO steps of {} samples; objective `{}` (uncertainty set `{}`), KL {:?} with {:?}.\n",
        steps.len(),
        cfg.run.batch_size,
        last.strategy,
        cfg.objective.uncertainty_set,
        cfg.ppo.kl,
        cfg.ppo.kl_estimator,
    );
    let _ = writeln!(
        md,
        "| metric | step {} | step {} |\n|---|---|---|",
        first.step, last.step
    );
    type Row = (&'static str, fn(&StepMetrics) -> f64);
    let rows: [Row; 12] = [
        ("aggregated reward", |m| m.rewards.aggregated as f64),
        ("nominal reward", |m| m.rewards.nominal as f64),
        ("min over heads", |m| m.rewards.min as f64),
        ("mean over heads", |m| m.rewards.mean as f64),
        ("head disagreement (std)", |m| {
            m.rewards.head_disagreement as f64
        }),
        ("nominal − min", |m| m.rewards.nominal_min_gap as f64),
        ("KL to reference", |m| m.kl as f64),
        ("entropy", |m| m.train.entropy as f64),
        ("policy loss", |m| m.train.policy_loss as f64),
        ("value loss", |m| m.train.value_loss as f64),
        ("response length", |m| m.response_length as f64),
        ("step seconds", |m| m.step_secs),
    ];
    for (name, f) in rows {
        let _ = writeln!(md, "| {name} | {:.4} | {:.4} |", f(first), f(last));
    }
    let freq: Vec<String> = last
        .rewards
        .nominal_head_frequency
        .iter()
        .map(|f| format!("{:.0}%", f * 100.0))
        .collect();
    let _ = writeln!(
        md,
        "\nHow often each head was the nominal (smallest σ) at the last step: {}.\n",
        freq.join(", ")
    );
    let sources = !last.sources.is_empty();
    if sources {
        sources_plot(&plots, steps)?;
        sources_table(&mut md, first, last);
    }
    let _ = writeln!(
        md,
        "Plots: `plots/rewards.png`, `plots/kl.png`, `plots/length.png`{}. Every step: `metrics.jsonl`.",
        if sources { ", `plots/sources.png`" } else { "" }
    );
    crate::checkpoint::write_atomic(&dir.join("report.md"), md.as_bytes())
        .map_err(|e| OrchestratorError::io("report: writing report.md", e))
}

/// A fused run's sources: each one's own nominal and lowest head, z-normalised with its
/// calibration (the scale they are fused on), per step.
fn sources_plot(plots: &Path, steps: &[StepMetrics]) -> Result<()> {
    let names: Vec<&str> = steps[steps.len() - 1]
        .sources
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    let mut curves = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let of = |f: fn(&SourceStats) -> f32| -> Vec<(f64, f64)> {
            steps
                .iter()
                .filter_map(|m| m.sources.get(i).map(|s| (m.step as f64, f(s) as f64)))
                .collect()
        };
        curves.push((
            format!("{name}: nominal (z)"),
            of(|s| s.mean_nominal_normalized),
        ));
        curves.push((
            format!("{name}: min (z)"),
            of(|s| s.calibration.normalize(s.mean_min)),
        ));
    }
    let series: Vec<Series> = curves
        .iter()
        .map(|(label, points)| Series { label, points })
        .collect();
    lines(
        &plots.join("sources.png"),
        "Reward sources, normalised with their calibration",
        "step",
        "z-score",
        &series,
    )
    .map_err(OrchestratorError::Report)
}

/// One row per source: its heads, calibration, and its own nominal, lowest head and mean over
/// heads at the first and last step (raw and normalised).
fn sources_table(md: &mut String, first: &StepMetrics, last: &StepMetrics) {
    let _ = writeln!(
        md,
        "Reward sources (fused after normalising each with its calibration), step {} → step {}:\n",
        first.step, last.step
    );
    let _ = writeln!(
        md,
        "| source | heads | calibration mean ± std | nominal | nominal (z) | min over its heads (z) | mean over its heads (z) |\n|---|---|---|---|---|---|---|"
    );
    for s1 in &last.sources {
        let s0 = first.sources.iter().find(|s| s.name == s1.name);
        let span = |f: &dyn Fn(&SourceStats) -> f32| match s0 {
            Some(s0) => format!("{:.4} → {:.4}", f(s0), f(s1)),
            None => format!("– → {:.4}", f(s1)),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {:.4} ± {:.4} | {} | {} | {} | {} |",
            s1.name,
            s1.heads,
            s1.calibration.mean,
            s1.calibration.std,
            span(&|s| s.mean_nominal),
            span(&|s| s.mean_nominal_normalized),
            span(&|s| s.calibration.normalize(s.mean_min)),
            span(&|s| s.calibration.normalize(s.mean_mean)),
        );
    }
    let _ = writeln!(md);
}
