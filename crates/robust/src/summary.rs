//! Per-sample statistics of a BRME's K heads.

use serde::Serialize;

use crate::{Result, RobustError};

/// One sample's head outputs: μ and σ of each of the K Gaussian heads.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadOutputs {
    pub mu: Vec<f32>,
    pub sigma: Vec<f32>,
}

impl HeadOutputs {
    pub fn heads(&self) -> usize {
        self.mu.len()
    }

    /// Checks shape and values; `index` names the sample in errors.
    pub fn validate(&self, index: usize) -> Result<()> {
        let bad = |message: String| Err(RobustError::BadSample { index, message });
        if self.mu.is_empty() {
            return bad("no heads".into());
        }
        if self.mu.len() != self.sigma.len() {
            return bad(format!(
                "{} μ values but {} σ values",
                self.mu.len(),
                self.sigma.len()
            ));
        }
        if let Some(m) = self.mu.iter().find(|m| !m.is_finite()) {
            return bad(format!("μ = {m} is not finite"));
        }
        if let Some(s) = self.sigma.iter().find(|s| !(s.is_finite() && **s >= 0.0)) {
            return bad(format!("σ = {s} is not a finite non-negative number"));
        }
        Ok(())
    }
}

/// Statistics of one sample's uncertainty set (the K head rewards).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SampleSummary {
    /// Index of the most confident head (smallest σ; the lowest index on ties).
    pub nominal_head: usize,
    /// μ of the nominal head: the paper's nominal reward r̂(x, a).
    pub nominal: f32,
    pub min: f32,
    pub max: f32,
    pub mean: f32,
    pub median: f32,
    /// Population variance of the head rewards.
    pub variance: f32,
}

/// Nominal head from σ; the other statistics over `rewards` (head μ, or sampled μ + εσ).
pub fn summarize_rewards(sigma: &[f32], rewards: &[f32]) -> SampleSummary {
    let nominal_head = sigma
        .iter()
        .enumerate()
        .fold(0, |best, (i, s)| if *s < sigma[best] { i } else { best });
    let k = rewards.len() as f32;
    let mean = rewards.iter().sum::<f32>() / k;
    let variance = rewards.iter().map(|r| (r - mean).powi(2)).sum::<f32>() / k;
    let mut sorted = rewards.to_vec();
    sorted.sort_by(f32::total_cmp);
    let mid = sorted.len() / 2;
    let median = if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        0.5 * (sorted[mid - 1] + sorted[mid])
    };
    SampleSummary {
        nominal_head,
        nominal: rewards[nominal_head],
        min: sorted[0],
        max: sorted[sorted.len() - 1],
        mean,
        median,
        variance,
    }
}

/// Summary of a sample whose uncertainty set is the head means.
pub fn summarize(h: &HeadOutputs) -> SampleSummary {
    summarize_rewards(&h.sigma, &h.mu)
}
