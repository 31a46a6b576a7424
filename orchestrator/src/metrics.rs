//! Per-step metrics: one JSON line per step in `runs/<id>/metrics.jsonl`, the same values as
//! Prometheus gauges (labelled by run id), and a one-line summary for the progress display.

use std::io::Write;
use std::path::Path;

use rrlhf_robust::Strategy;
use serde::{Deserialize, Serialize};

use crate::error::{OrchestratorError, Result};
use crate::sources::SourceStats;
use crate::step::{RewardStats, TrainStats};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: usize,
    /// The objective in force for this step (it can change mid-run through the API), in its
    /// text form (`"tradeoff:0.4"`).
    pub strategy: Strategy,
    /// Statistics of the uncertainty set the strategy aggregated: with several reward
    /// sources, the fused set of their normalised heads.
    pub rewards: RewardStats,
    /// Each reward source's own view of the batch, when several are fused (absent otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceStats>,
    /// Mean true reward of the batch, when the run has one (a gold-reward testbed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gold: Option<f32>,
    /// Mean per-sequence KL to the reference, and the β applied.
    pub kl: f32,
    pub beta: f64,
    pub train: TrainStats,
    pub response_length: f32,
    pub generate_secs: f64,
    /// Scoring/evaluation still running after the last sample was generated.
    pub score_tail_secs: f64,
    pub train_secs: f64,
    pub step_secs: f64,
    pub generated_tokens_per_sec: f64,
}

impl StepMetrics {
    pub fn line(&self) -> String {
        let gold = self
            .gold
            .map_or(String::new(), |g| format!(" gold {g:+.3} |"));
        format!(
            "step {:>4} | {} reward {:+.3} (nominal {:+.3}, min {:+.3}, disagreement {:.3}) |{gold} KL {:.3} β {:.3} | \
             policy {:+.4} value {:.4} clip {:.2} | len {:.1} | gen {:.1}s score +{:.1}s train {:.1}s",
            self.step,
            self.strategy,
            self.rewards.aggregated,
            self.rewards.nominal,
            self.rewards.min,
            self.rewards.head_disagreement,
            self.kl,
            self.beta,
            self.train.policy_loss,
            self.train.value_loss,
            self.train.clip_fraction,
            self.response_length,
            self.generate_secs,
            self.score_tail_secs,
            self.train_secs,
        )
    }

    /// Sets the run's Prometheus gauges to this step's values.
    pub fn record(&self, run: &str) {
        let labels = [("run", run.to_owned())];
        let set = |name: &'static str, v: f64| metrics::gauge!(name, &labels).set(v);
        set("rrlhf_run_step", self.step as f64);
        set(
            "rrlhf_run_reward_aggregated",
            self.rewards.aggregated as f64,
        );
        set("rrlhf_run_reward_nominal", self.rewards.nominal as f64);
        set("rrlhf_run_reward_min", self.rewards.min as f64);
        set("rrlhf_run_reward_mean", self.rewards.mean as f64);
        set(
            "rrlhf_run_head_disagreement",
            self.rewards.head_disagreement as f64,
        );
        set(
            "rrlhf_run_nominal_min_gap",
            self.rewards.nominal_min_gap as f64,
        );
        set("rrlhf_run_kl", self.kl as f64);
        if let Some(g) = self.gold {
            set("rrlhf_run_gold_reward", g as f64);
        }
        set("rrlhf_run_kl_beta", self.beta);
        set("rrlhf_run_entropy", self.train.entropy as f64);
        set("rrlhf_run_policy_loss", self.train.policy_loss as f64);
        set("rrlhf_run_value_loss", self.train.value_loss as f64);
        set("rrlhf_run_clip_fraction", self.train.clip_fraction as f64);
        set("rrlhf_run_actor_checksum", self.train.actor_checksum);
        set(
            "rrlhf_run_actor_checksum_spread",
            self.train.actor_checksum_spread,
        );
        set("rrlhf_run_critic_checksum", self.train.critic_checksum);
        set(
            "rrlhf_run_critic_checksum_spread",
            self.train.critic_checksum_spread,
        );
        set("rrlhf_run_response_length", self.response_length as f64);
        set("rrlhf_run_generate_seconds", self.generate_secs);
        set("rrlhf_run_train_seconds", self.train_secs);
        set(
            "rrlhf_run_generated_tokens_per_second",
            self.generated_tokens_per_sec,
        );
        for s in &self.sources {
            let labels = [("run", run.to_owned()), ("source", s.name.clone())];
            for (name, v) in [
                ("rrlhf_run_source_reward_nominal", s.mean_nominal),
                (
                    "rrlhf_run_source_reward_nominal_normalized",
                    s.mean_nominal_normalized,
                ),
                ("rrlhf_run_source_reward_min", s.mean_min),
                ("rrlhf_run_source_reward_mean", s.mean_mean),
                ("rrlhf_run_source_nominal_share", s.nominal_share),
            ] {
                metrics::gauge!(name, &labels).set(v as f64);
            }
        }
        for (h, f) in self.rewards.nominal_head_frequency.iter().enumerate() {
            metrics::gauge!("rrlhf_run_nominal_head_frequency", "run" => run.to_owned(), "head" => h.to_string())
                .set(*f as f64);
        }
    }
}

/// Appends one step's line and syncs it, so a crash never leaves a torn last line behind a
/// checkpoint that counts it.
pub fn append(path: &Path, m: &StepMetrics) -> Result<()> {
    let mut line = serde_json::to_vec(m).expect("metrics serialise");
    line.push(b'\n');
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| {
            f.write_all(&line)?;
            f.sync_data()
        })
        .map_err(|e| OrchestratorError::io(format!("metrics: appending to {}", path.display()), e))
}

/// Every step recorded in a metrics file (a torn last line, from a crash, is dropped).
pub fn read_all(path: &Path) -> Result<Vec<StepMetrics>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => {
            return Err(OrchestratorError::io(
                format!("metrics: reading {}", path.display()),
                e,
            ));
        }
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Keeps only the steps up to and including `last_step` (a resumed run redoes the rest).
pub fn truncate_after(path: &Path, last_step: usize) -> Result<()> {
    let mut bytes = Vec::new();
    for m in read_all(path)?.iter().filter(|m| m.step <= last_step) {
        bytes.extend(serde_json::to_vec(m).expect("metrics serialise"));
        bytes.push(b'\n');
    }
    crate::checkpoint::write_atomic(path, &bytes)
        .map_err(|e| OrchestratorError::io(format!("metrics: rewriting {}", path.display()), e))
}
