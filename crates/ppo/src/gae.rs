//! Generalised advantage estimation (Schulman et al. 2016) over one response:
//! `δ_t = r_t + γ·V_{t+1} − V_t` (V after the last token is 0: the episode ends there),
//! `A_t = Σ_k (γλ)^k δ_{t+k}`, returns `R_t = A_t + V_t` (the critic's target). Then advantages
//! are whitened over every token of the batch.

use crate::{Result, in_range, same_len};

/// Advantages and returns of one sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Gae {
    pub advantages: Vec<f32>,
    pub returns: Vec<f32>,
}

pub fn gae(rewards: &[f32], values: &[f32], gamma: f64, lambda: f64) -> Result<Gae> {
    same_len("values", rewards.len(), values.len())?;
    in_range("gamma", gamma, 0.0, 1.0, "in [0, 1]")?;
    in_range("lambda_gae", lambda, 0.0, 1.0, "in [0, 1]")?;
    let n = rewards.len();
    let mut advantages = vec![0f32; n];
    let mut next_adv = 0.0f64;
    for t in (0..n).rev() {
        let next_value = if t + 1 < n { values[t + 1] as f64 } else { 0.0 };
        let delta = rewards[t] as f64 + gamma * next_value - values[t] as f64;
        next_adv = delta + gamma * lambda * next_adv;
        advantages[t] = next_adv as f32;
    }
    let returns = advantages.iter().zip(values).map(|(a, v)| a + v).collect();
    Ok(Gae {
        advantages,
        returns,
    })
}

/// Shifts and scales every token's advantage so the batch has mean 0 and std 1.
pub fn whiten(batch: &mut [Vec<f32>]) {
    let n: usize = batch.iter().map(Vec::len).sum();
    if n < 2 {
        return;
    }
    let all = || batch.iter().flatten().map(|&x| x as f64);
    let mean = all().sum::<f64>() / n as f64;
    let var = all().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let scale = 1.0 / (var.sqrt() + 1e-8);
    for x in batch.iter_mut().flatten() {
        *x = ((*x as f64 - mean) * scale) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn with_gamma_and_lambda_one_advantages_are_reward_to_go_minus_values(
            rv in prop::collection::vec((-3.0f32..3.0, -3.0f32..3.0), 1..40)
        ) {
            let (r, v): (Vec<f32>, Vec<f32>) = rv.into_iter().unzip();
            let g = gae(&r, &v, 1.0, 1.0).unwrap();
            for t in 0..r.len() {
                let to_go: f64 = r[t..].iter().map(|&x| x as f64).sum();
                prop_assert!((g.advantages[t] as f64 - (to_go - v[t] as f64)).abs() < 1e-4);
                // Returns are then the reward-to-go itself.
                prop_assert!((g.returns[t] as f64 - to_go).abs() < 1e-4);
            }
        }

        #[test]
        fn with_lambda_zero_advantages_are_one_step_td_errors(
            rv in prop::collection::vec((-3.0f32..3.0, -3.0f32..3.0), 1..40), gamma in 0.0f64..1.0,
        ) {
            let (r, v): (Vec<f32>, Vec<f32>) = rv.into_iter().unzip();
            let g = gae(&r, &v, gamma, 0.0).unwrap();
            for t in 0..r.len() {
                let next = if t + 1 < r.len() { v[t + 1] as f64 } else { 0.0 };
                let delta = r[t] as f64 + gamma * next - v[t] as f64;
                prop_assert!((g.advantages[t] as f64 - delta).abs() < 1e-4);
            }
        }

        #[test]
        fn whitened_batches_have_zero_mean_unit_std(
            rows in prop::collection::vec(prop::collection::vec(-5.0f32..5.0, 1..10), 2..8)
        ) {
            let mut rows = rows;
            let spread = {
                let all: Vec<f32> = rows.iter().flatten().copied().collect();
                all.iter().any(|&x| (x - all[0]).abs() > 1e-3)
            };
            whiten(&mut rows);
            let all: Vec<f64> = rows.iter().flatten().map(|&x| x as f64).collect();
            let n = all.len() as f64;
            let mean = all.iter().sum::<f64>() / n;
            prop_assert!(mean.abs() < 1e-4);
            if spread {
                let var = all.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
                prop_assert!((var.sqrt() - 1.0).abs() < 1e-3);
            }
        }
    }

    #[test]
    fn bad_gamma_and_length_are_named() {
        assert!(
            gae(&[1.0], &[0.0], 1.5, 0.9)
                .unwrap_err()
                .to_string()
                .contains("gamma")
        );
        assert!(
            gae(&[1.0, 2.0], &[0.0], 1.0, 0.9)
                .unwrap_err()
                .to_string()
                .contains("values")
        );
    }
}
