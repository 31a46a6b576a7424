//! Token rewards of one sequence: the KL penalty `−β·KL_t` on every response token, plus the
//! (aggregated, optionally clipped and normalised) sequence reward on the last one — eq. (4) of
//! the paper, the reward shaping of InstructGPT/OpenRLHF.

use serde::{Deserialize, Serialize};

use crate::{PpoError, Result};

/// `−β·kl[t]` for every t, plus `score` at the last token. An empty response gets no rewards.
pub fn token_rewards(score: f32, kl: &[f32], beta: f64) -> Vec<f32> {
    let mut r: Vec<f32> = kl.iter().map(|&k| (-beta * k as f64) as f32).collect();
    if let Some(last) = r.last_mut() {
        *last += score;
    }
    r
}

/// Running mean and variance of sequence rewards (Chan et al.'s parallel update), so rewards
/// can be normalised with statistics of every batch seen so far; serialisable for resume.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct RewardNorm {
    pub count: f64,
    pub mean: f64,
    /// Sum of squared deviations from the mean.
    pub m2: f64,
}

impl RewardNorm {
    pub fn update(&mut self, batch: &[f32]) {
        let n = batch.len() as f64;
        if n == 0.0 {
            return;
        }
        let mean = batch.iter().map(|&x| x as f64).sum::<f64>() / n;
        let m2 = batch
            .iter()
            .map(|&x| (x as f64 - mean).powi(2))
            .sum::<f64>();
        let total = self.count + n;
        let delta = mean - self.mean;
        self.m2 += m2 + delta * delta * self.count * n / total;
        self.mean += delta * n / total;
        self.count = total;
    }

    pub fn std(&self) -> f64 {
        if self.count > 1.0 {
            (self.m2 / (self.count - 1.0)).sqrt()
        } else {
            1.0
        }
    }

    /// `(x − mean) / std` with the statistics so far.
    pub fn normalize(&self, x: f32) -> f32 {
        ((x as f64 - self.mean) / self.std().max(1e-8)) as f32
    }
}

/// Clips every reward into `[−limit, limit]`; `limit` must be positive.
pub fn clip(rewards: &mut [f32], limit: f32) -> Result<()> {
    if !(limit.is_finite() && limit > 0.0) {
        return Err(PpoError::BadParameter {
            name: "reward_clip",
            expected: "> 0",
            value: limit as f64,
        });
    }
    for r in rewards {
        *r = r.clamp(-limit, limit);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn score_lands_on_the_last_token() {
        let r = token_rewards(2.0, &[0.5, -0.25, 1.0], 0.1);
        assert_eq!(r, vec![-0.05, 0.025, 2.0 - 0.1]);
        assert!(token_rewards(1.0, &[], 0.1).is_empty());
    }

    #[test]
    fn clip_bounds_and_rejects_a_bad_limit() {
        let mut r = vec![-5.0, 0.5, 9.0];
        clip(&mut r, 1.0).unwrap();
        assert_eq!(r, vec![-1.0, 0.5, 1.0]);
        assert!(
            clip(&mut r, 0.0)
                .unwrap_err()
                .to_string()
                .contains("reward_clip")
        );
    }

    proptest! {
        #[test]
        fn running_moments_equal_the_batch_moments(
            a in prop::collection::vec(-10.0f32..10.0, 1..40),
            b in prop::collection::vec(-10.0f32..10.0, 1..40),
        ) {
            let mut running = RewardNorm::default();
            running.update(&a);
            running.update(&b);
            let all: Vec<f64> = a.iter().chain(&b).map(|&x| x as f64).collect();
            let n = all.len() as f64;
            let mean = all.iter().sum::<f64>() / n;
            let m2 = all.iter().map(|x| (x - mean).powi(2)).sum::<f64>();
            prop_assert!((running.mean - mean).abs() < 1e-9);
            prop_assert!((running.m2 - m2).abs() < 1e-6 * (1.0 + m2));
        }

        #[test]
        fn total_token_reward_is_score_minus_beta_total_kl(
            kl in prop::collection::vec(-2.0f32..2.0, 1..30), score in -5.0f32..5.0, beta in 0.0f64..1.0,
        ) {
            let r = token_rewards(score, &kl, beta);
            let total: f64 = r.iter().map(|&x| x as f64).sum();
            let expect = score as f64 - beta * kl.iter().map(|&k| k as f64).sum::<f64>();
            prop_assert!((total - expect).abs() < 1e-4);
        }
    }
}
