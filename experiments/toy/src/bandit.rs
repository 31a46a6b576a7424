//! PPO on the 8 × 8 bandit: each iteration samples responses for every prompt from the current
//! policy, rewards them with the reward table minus a KL penalty `β·(log π − log π₀)` to the
//! initial policy, uses the per-prompt mean reward as the baseline, whitens the advantages and
//! takes clipped-surrogate steps for a few epochs.

use rrlhf_robust::rng::Rng;
use rrlhf_train::optim::AdamW;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::N;
use crate::mlp::{Mlp, one_hots};
use crate::reward::rows;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PpoSettings {
    pub iterations: usize,
    pub samples_per_prompt: usize,
    pub epochs: usize,
    pub lr: f64,
    pub clip: f64,
    pub beta: f64,
    pub hidden: i64,
}

impl Default for PpoSettings {
    fn default() -> Self {
        Self {
            iterations: 100,
            samples_per_prompt: 32,
            epochs: 4,
            lr: 1e-2,
            clip: 0.2,
            beta: 0.05,
            hidden: 32,
        }
    }
}

/// Trains a policy initialised from `init_seed` on `reward[x][a]`; returns π(a | x) at the end.
pub fn train(
    reward: &[Vec<f32>],
    s: &PpoSettings,
    init_seed: u64,
    sample_seed: u64,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let policy = Mlp::new(N as i64, s.hidden, N as i64, init_seed);
    let inputs = one_hots(N);
    let logp0 = policy
        .forward(&inputs)
        .log_softmax(-1, Kind::Float)
        .detach();
    let logp0_rows = rows(&logp0);
    let mut opt = AdamW::new(&policy.vs, 0.0)?;
    let mut rng = Rng::new(sample_seed);
    let m = s.samples_per_prompt;
    for _ in 0..s.iterations {
        let old = policy
            .forward(&inputs)
            .log_softmax(-1, Kind::Float)
            .detach();
        let old_rows = rows(&old);
        let (mut xs, mut acts, mut adv) = (Vec::new(), Vec::new(), Vec::new());
        for x in 0..N {
            let start = adv.len();
            for _ in 0..m {
                let a = sample(&old_rows[x], rng.uniform());
                let kl = old_rows[x][a] - logp0_rows[x][a];
                xs.push(x as i64);
                acts.push(a as i64);
                adv.push(reward[x][a] as f64 - s.beta * kl as f64);
            }
            let mean = adv[start..].iter().sum::<f64>() / m as f64;
            for v in &mut adv[start..] {
                *v -= mean;
            }
        }
        let sd = (adv.iter().map(|v| v * v).sum::<f64>() / adv.len() as f64).sqrt();
        let adv: Vec<f32> = adv.iter().map(|v| (v / (sd + 1e-8)) as f32).collect();
        let (x_t, a_t, adv_t) = (
            Tensor::from_slice(&xs),
            Tensor::from_slice(&acts),
            Tensor::from_slice(&adv),
        );
        let old_lp = old.index(&[Some(&x_t), Some(&a_t)]);
        for _ in 0..s.epochs {
            let logp = policy.forward(&inputs).log_softmax(-1, Kind::Float);
            let lp = logp.index(&[Some(&x_t), Some(&a_t)]);
            let ratio = (&lp - &old_lp).exp();
            let clipped = ratio.clamp(1.0 - s.clip, 1.0 + s.clip);
            let loss = -(&ratio * &adv_t)
                .minimum(&(&clipped * &adv_t))
                .mean(Kind::Float);
            opt.step(&loss, s.lr, 0.0)?;
        }
    }
    let probs = policy.forward(&inputs).softmax(-1, Kind::Float);
    Ok(rows(&probs))
}

/// Inverse-CDF draw from log-probabilities `row` with uniform `u`.
fn sample(row: &[f32], u: f64) -> usize {
    let mut acc = 0.0;
    for (a, lp) in row.iter().enumerate() {
        acc += (*lp as f64).exp();
        if u < acc {
            return a;
        }
    }
    row.len() - 1
}
