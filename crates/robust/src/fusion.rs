//! Heterologous reward fusion (paper, appendix F): several reward sources with different
//! ranges are made comparable by z-normalising each with the mean and standard deviation it
//! showed on a shared reference set, and then aggregated like the heads of one ensemble.
//!
//! A head's σ is scaled with its μ: z-normalisation divides a source's rewards by its std, so
//! the spread of each of its Gaussians shrinks or grows by the same factor. The nominal head
//! of a fused set (smallest σ) is then the most confident head in units of each source's own
//! spread, and a sampled uncertainty set draws `z(μ) + ε·σ/std`, which is `z(μ + ε·σ)`.

use serde::{Deserialize, Serialize};

use crate::summary::HeadOutputs;
use crate::{Result, RobustError};

/// A reward source's statistics on a reference set (`rrlhf rm calibrate`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub mean: f32,
    pub std: f32,
    /// How many rewards the statistics were measured on.
    pub count: usize,
}

impl Calibration {
    /// Mean and population standard deviation of `rewards`.
    pub fn measure(rewards: &[f32]) -> Result<Self> {
        if rewards.is_empty() {
            return Err(RobustError::BadParameter {
                name: "reference rewards",
                expected: "non-empty",
                value: "[]".into(),
            });
        }
        if let Some(r) = rewards.iter().find(|r| !r.is_finite()) {
            return Err(RobustError::BadParameter {
                name: "reference reward",
                expected: "finite",
                value: r.to_string(),
            });
        }
        let n = rewards.len() as f64;
        let mean = rewards.iter().map(|&r| r as f64).sum::<f64>() / n;
        let var = rewards
            .iter()
            .map(|&r| (r as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        Ok(Self {
            mean: mean as f32,
            std: var.sqrt() as f32,
            count: rewards.len(),
        })
    }

    /// `(r − mean) / std`; a constant source (std ≈ 0) maps to 0 rather than infinity.
    pub fn normalize(&self, reward: f32) -> f32 {
        if self.std > 1e-8 {
            (reward - self.mean) / self.std
        } else {
            0.0
        }
    }

    /// A head's σ in the normalised units: `σ / std` (0 for a constant source, whose rewards
    /// all normalise to the same 0).
    pub fn normalize_sigma(&self, sigma: f32) -> f32 {
        if self.std > 1e-8 {
            sigma / self.std
        } else {
            0.0
        }
    }
}

/// Stacks per-source rewards of one sample into one z-normalised uncertainty set.
/// `sources[j]` is `(calibration, rewards of source j for this sample)`.
pub fn fuse(sources: &[(Calibration, &[f32])]) -> Vec<f32> {
    sources
        .iter()
        .flat_map(|(cal, rs)| rs.iter().map(|&r| cal.normalize(r)))
        .collect()
}

/// [`fuse`] over full head outputs: one sample's heads of every source, μ z-normalised and σ
/// scaled by `1/std` (module docs), concatenated in source order.
pub fn fuse_heads(sources: &[(Calibration, &HeadOutputs)]) -> HeadOutputs {
    let mus: Vec<(Calibration, &[f32])> = sources.iter().map(|(c, h)| (*c, &h.mu[..])).collect();
    HeadOutputs {
        mu: fuse(&mus),
        sigma: sources
            .iter()
            .flat_map(|(c, h)| h.sigma.iter().map(|&s| c.normalize_sigma(s)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalised_sources_have_zero_mean_unit_std() {
        let a = [10.0, 12.0, 14.0, 16.0];
        let cal = Calibration::measure(&a).unwrap();
        let z: Vec<f32> = a.iter().map(|&r| cal.normalize(r)).collect();
        let mean: f32 = z.iter().sum::<f32>() / 4.0;
        let var: f32 = z.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / 4.0;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5);
        let flat = Calibration::measure(&[3.0, 3.0]).unwrap();
        assert_eq!(flat.normalize(5.0), 0.0);
        assert!(Calibration::measure(&[]).is_err());
        let other = Calibration {
            mean: 0.0,
            std: 2.0,
            count: 1,
        };
        assert_eq!(
            fuse(&[(cal, &[13.0]), (other, &[4.0, -2.0])]),
            vec![0.0, 2.0, -1.0]
        );
    }

    #[test]
    fn fused_heads_scale_sigma_with_mu() {
        let a = Calibration {
            mean: 1.0,
            std: 2.0,
            count: 10,
        };
        let b = Calibration {
            mean: -1.0,
            std: 0.5,
            count: 10,
        };
        let ha = HeadOutputs {
            mu: vec![3.0, 1.0],
            sigma: vec![0.4, 1.0],
        };
        let hb = HeadOutputs {
            mu: vec![-0.5],
            sigma: vec![0.1],
        };
        let f = fuse_heads(&[(a, &ha), (b, &hb)]);
        assert_eq!(f.mu, vec![1.0, 0.0, 1.0]);
        assert_eq!(f.sigma, vec![0.2, 0.5, 0.2]);
        // The sampled set of a normalised head is the normalised sample of the raw head.
        let (mu, sigma, eps) = (3.0f32, 0.4f32, 1.5f32);
        let z = a.normalize(mu) + eps * a.normalize_sigma(sigma);
        assert!((z - a.normalize(mu + eps * sigma)).abs() < 1e-6);
    }
}
