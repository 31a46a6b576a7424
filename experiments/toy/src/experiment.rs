//! The experiment: for each seed, one data set, one nominal RM and its extra RMs, one policy
//! initialisation and one sampling stream, shared by every condition; then paired statistics.

use rrlhf_robust::rng::Rng;
use rrlhf_robust::stats::{mean_se, sign_test};
use rrlhf_robust::{HeadOutputs, Lambda, Strategy, UncertaintySet, aggregate};
use serde::{Deserialize, Serialize};

use crate::N;
use crate::bandit::{self, PpoSettings};
use crate::reward::{RewardModel, RmArch, diagonal_hits, preferences, rows, standardize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToyConfig {
    pub seeds: usize,
    pub first_seed: u64,
    pub rm_arch: RmArch,
    /// Rejected responses per prompt (the paper: two).
    pub pairs_per_prompt: usize,
    /// RMs from other seeds besides the nominal one (the paper: three).
    pub extra_rms: usize,
    pub rm_hidden: i64,
    pub rm_steps: usize,
    pub rm_lr: f64,
    /// Put every RM on one scale (zero mean, unit std over the 64 cells) before aggregating.
    pub standardize: bool,
    /// λ of the robust conditions `λ·nominal + (1−λ)·min`; λ = 1 (standard RLHF) is always run.
    pub lambdas: Vec<Lambda>,
    pub ppo: PpoSettings,
}

impl Default for ToyConfig {
    fn default() -> Self {
        Self {
            seeds: 50,
            first_seed: 0,
            rm_arch: RmArch::PerPrompt,
            pairs_per_prompt: 2,
            extra_rms: 3,
            rm_hidden: 32,
            rm_steps: 300,
            rm_lr: 1e-2,
            standardize: true,
            lambdas: [0.0, 0.2, 0.4, 0.6, 0.8]
                .map(|l| Lambda::new(l).expect("in [0, 1]"))
                .to_vec(),
            ppo: PpoSettings::default(),
        }
    }
}

impl ToyConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.seeds >= 1, "seeds: must be ≥ 1");
        anyhow::ensure!(
            (1..N).contains(&self.pairs_per_prompt),
            "pairs_per_prompt: must be in 1..={}",
            N - 1
        );
        anyhow::ensure!(
            self.rm_steps >= 1 && self.ppo.iterations >= 1,
            "rm_steps and iterations must be ≥ 1"
        );
        Ok(())
    }

    /// The conditions in report order: standard first, then the robust λs, then the controls.
    pub fn conditions(&self) -> Vec<(String, Strategy)> {
        let mut c = vec![("standard (λ=1)".to_owned(), Strategy::Nominal)];
        let mut ls = self.lambdas.clone();
        ls.sort_by(|a, b| b.get().total_cmp(&a.get()));
        ls.dedup();
        for l in ls.into_iter().filter(|l| l.get() < 1.0) {
            c.push((format!("robust λ={l}"), Strategy::Tradeoff { lambda: l }));
        }
        c.push(("mean of RMs".to_owned(), Strategy::Mean));
        c
    }
}

/// One condition on one seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Prompts whose most likely response under the final policy is the diagonal.
    pub correct: usize,
    /// Prompts whose aggregated reward is highest on the diagonal.
    pub reward_correct: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedResult {
    pub seed: u64,
    /// Diagonal accuracy (prompts out of 8) of the nominal RM and of each extra RM.
    pub rm_correct: Vec<usize>,
    pub outcomes: Vec<Outcome>,
    /// Tables of the first seed, for the heatmaps: RMs then the final policies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tables: Option<Tables>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tables {
    pub rms: Vec<Vec<Vec<f32>>>,
    pub rewards: Vec<Vec<Vec<f32>>>,
    pub policies: Vec<Vec<Vec<f32>>>,
}

/// Seed-level statistics of one condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConditionSummary {
    pub name: String,
    pub strategy: String,
    pub correct_mean: f64,
    pub correct_se: f64,
    /// Fraction of seeds where all 8 prompts are right.
    pub all_correct: f64,
    pub reward_correct_mean: f64,
    /// Seed by seed against standard RLHF: more prompts right, fewer, equal.
    pub wins: usize,
    pub losses: usize,
    pub ties: usize,
    /// Two-sided sign test of wins vs losses.
    pub sign_test_p: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToyResult {
    pub config: ToyConfig,
    /// Mean diagonal accuracy of the nominal RM (fraction of prompts).
    pub rm_diagonal_accuracy: f64,
    pub conditions: Vec<ConditionSummary>,
    pub seeds: Vec<SeedResult>,
}

fn mix(seed: u64, stream: u64) -> u64 {
    Rng::new(seed.wrapping_mul(rrlhf_robust::rng::GOLDEN) ^ stream).next_u64()
}

/// Runs one seed: data, RMs, every condition.
pub fn run_seed(cfg: &ToyConfig, seed: u64, keep_tables: bool) -> anyhow::Result<SeedResult> {
    let pairs = preferences(cfg.pairs_per_prompt, mix(seed, 1));
    let mut rms = Vec::new();
    for k in 0..=cfg.extra_rms {
        let rm = RewardModel::new(cfg.rm_arch, cfg.rm_hidden, mix(seed, 100 + k as u64));
        rm.train(&pairs, cfg.rm_steps, cfg.rm_lr)?;
        let mut t = rows(&rm.table());
        if cfg.standardize {
            standardize(&mut t);
        }
        rms.push(t);
    }
    let rm_correct = rms.iter().map(|t| diagonal_hits(t)).collect();
    // Every cell as K "heads": head 0 is the nominal RM (σ = 0 makes it the nominal).
    let cells: Vec<HeadOutputs> = (0..N * N)
        .map(|i| HeadOutputs {
            mu: rms.iter().map(|t| t[i / N][i % N]).collect(),
            sigma: (0..rms.len())
                .map(|k| if k == 0 { 0.0 } else { 1.0 })
                .collect(),
        })
        .collect();
    let (mut outcomes, mut rewards, mut policies) = (Vec::new(), Vec::new(), Vec::new());
    for (_, strategy) in cfg.conditions() {
        let agg = aggregate(&cells, strategy, UncertaintySet::Mean, seed)?;
        let table: Vec<Vec<f32>> = agg
            .chunks(N)
            .map(|r| r.iter().map(|a| a.reward).collect())
            .collect();
        let probs = bandit::train(&table, &cfg.ppo, mix(seed, 2), mix(seed, 3))?;
        outcomes.push(Outcome {
            correct: diagonal_hits(&probs),
            reward_correct: diagonal_hits(&table),
        });
        if keep_tables {
            rewards.push(table);
            policies.push(probs);
        }
    }
    Ok(SeedResult {
        seed,
        rm_correct,
        outcomes,
        tables: keep_tables.then_some(Tables {
            rms,
            rewards,
            policies,
        }),
    })
}

/// Runs every seed (spread over the machine's cores) and summarises.
pub fn run(cfg: &ToyConfig, progress: impl Fn(usize) + Sync) -> anyhow::Result<ToyResult> {
    cfg.validate()?;
    tch::set_num_threads(1);
    let seeds: Vec<u64> = (0..cfg.seeds as u64).map(|i| cfg.first_seed + i).collect();
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(seeds.len());
    let done = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<SeedResult> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let (seeds, done, progress) = (&seeds, &done, &progress);
                scope.spawn(move || -> anyhow::Result<Vec<SeedResult>> {
                    let mut out = Vec::new();
                    for (i, &seed) in seeds.iter().enumerate().skip(w).step_by(workers) {
                        out.push(run_seed(cfg, seed, i == 0)?);
                        progress(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1);
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("toy worker panicked"))
            .collect::<anyhow::Result<Vec<Vec<SeedResult>>>>()
    })?
    .into_iter()
    .flatten()
    .collect();
    results.sort_by_key(|r| r.seed);

    let n = results.len() as f64;
    let conditions = cfg
        .conditions()
        .into_iter()
        .enumerate()
        .map(|(c, (name, strategy))| {
            let xs: Vec<f64> = results
                .iter()
                .map(|r| r.outcomes[c].correct as f64)
                .collect();
            let (mean, se) = mean_se(&xs);
            let (mut wins, mut losses, mut ties) = (0, 0, 0);
            for r in &results {
                match r.outcomes[c].correct.cmp(&r.outcomes[0].correct) {
                    std::cmp::Ordering::Greater => wins += 1,
                    std::cmp::Ordering::Less => losses += 1,
                    std::cmp::Ordering::Equal => ties += 1,
                }
            }
            ConditionSummary {
                name,
                strategy: strategy.to_string(),
                correct_mean: mean,
                correct_se: se,
                all_correct: results
                    .iter()
                    .filter(|r| r.outcomes[c].correct == N)
                    .count() as f64
                    / n,
                reward_correct_mean: results
                    .iter()
                    .map(|r| r.outcomes[c].reward_correct as f64)
                    .sum::<f64>()
                    / n,
                wins,
                losses,
                ties,
                sign_test_p: sign_test(wins, losses),
            }
        })
        .collect();
    Ok(ToyResult {
        config: cfg.clone(),
        rm_diagonal_accuracy: results.iter().map(|r| r.rm_correct[0] as f64).sum::<f64>()
            / n
            / N as f64,
        conditions,
        seeds: results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preferences_prefer_the_diagonal_over_distinct_others() {
        let p = preferences(3, 5);
        assert_eq!(p.len(), 24);
        for x in 0..N {
            let rej: Vec<usize> = p.iter().filter(|q| q.0 == x).map(|q| q.2).collect();
            assert!(rej.iter().all(|&r| r != x));
            let mut d = rej.clone();
            d.dedup();
            assert_eq!(d.len(), 3);
        }
    }
}
