//! The experiment: for each seed, one data set, one nominal RM and its extra RMs (the deep
//! ensemble), optionally one multi-head RM with as many heads on a shared trunk, one policy
//! initialisation and one sampling stream, shared by every condition; then paired statistics.

use rrlhf_robust::rng::Rng;
use rrlhf_robust::stats::{mean_se, sign_test};
use rrlhf_robust::{HeadOutputs, Lambda, Strategy, UncertaintySet, aggregate};
use serde::{Deserialize, Serialize};

use crate::N;
use crate::bandit::{self, PpoSettings};
use crate::reward::{
    HeadData, Pair, RewardModel, RmArch, diagonal_hits, partition, preferences, rows, standardize,
};

/// A reward table: `[prompt][response]`.
pub type Table = Vec<Vec<f32>>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// Settings saved before a field existed still load, with that field's default.
#[serde(default)]
pub struct ToyConfig {
    pub seeds: usize,
    pub first_seed: u64,
    pub rm_arch: RmArch,
    /// Rejected responses per prompt (the paper: two).
    pub pairs_per_prompt: usize,
    /// RMs from other seeds besides the nominal one (the paper: three). The multi-head RM has
    /// `1 + extra_rms` heads, so both ensembles have as many members.
    pub extra_rms: usize,
    pub rm_hidden: i64,
    pub rm_steps: usize,
    pub rm_lr: f64,
    /// Put every RM (and every head) on one scale (zero mean, unit std over the 64 cells)
    /// before aggregating.
    pub standardize: bool,
    /// λ of the robust conditions `λ·nominal + (1−λ)·min`; λ = 1 (standard RLHF) is always run.
    pub lambdas: Vec<Lambda>,
    /// c of the UWO conditions `mean − c·variance` over the members (Coste et al. 2023).
    pub uwo_cs: Vec<f32>,
    /// Whether to train the multi-head RM, and on which pairs its heads train.
    pub multi_head: HeadData,
    /// λ of the multi-head robust conditions (its head 0 alone, λ = 1, always runs).
    pub multi_head_lambdas: Vec<Lambda>,
    pub ppo: PpoSettings,
}

impl Default for ToyConfig {
    fn default() -> Self {
        let lambdas = |ls: &[f32]| {
            ls.iter()
                .map(|&l| Lambda::new(l).expect("in [0, 1]"))
                .collect()
        };
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
            lambdas: lambdas(&[0.0, 0.2, 0.4, 0.6, 0.8]),
            uwo_cs: vec![0.5, 2.0],
            multi_head: HeadData::All,
            multi_head_lambdas: lambdas(&[0.4]),
            ppo: PpoSettings::default(),
        }
    }
}

/// Where a condition's member rewards come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ensemble {
    /// The nominal RM and the extra RMs: independent networks from other init seeds, same data.
    DeepEns,
    /// One RM whose heads share a trunk (the BRME shape); head 0 is its nominal.
    MultiHead,
}

impl Ensemble {
    pub fn label(self) -> &'static str {
        match self {
            Self::DeepEns => "deep-ens",
            Self::MultiHead => "multi-head",
        }
    }
}

/// One way of turning an ensemble's rewards into the reward PPO sees.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub name: String,
    pub ensemble: Ensemble,
    pub strategy: Strategy,
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
        anyhow::ensure!(
            self.uwo_cs.iter().all(|c| c.is_finite() && *c >= 0.0),
            "uwo_cs: every c must be finite and ≥ 0"
        );
        anyhow::ensure!(
            self.multi_head != HeadData::Partition || N * self.pairs_per_prompt > self.extra_rms,
            "multi_head = partition: {} pairs cannot give each of {} heads one",
            N * self.pairs_per_prompt,
            self.extra_rms + 1
        );
        Ok(())
    }

    /// The conditions in report order: standard first, then the deep ensemble's robust λs, its
    /// mean and its UWO; then the same for the multi-head RM, starting from its head 0 alone.
    pub fn conditions(&self) -> Vec<Condition> {
        let mut out = Vec::new();
        let mut push = |name: String, ensemble, strategy| {
            out.push(Condition {
                name,
                ensemble,
                strategy,
            })
        };
        let desc = |ls: &[Lambda]| {
            let mut ls = ls.to_vec();
            ls.sort_by(|a, b| b.get().total_cmp(&a.get()));
            ls.dedup();
            ls.into_iter().filter(|l| l.get() < 1.0).collect::<Vec<_>>()
        };
        let mut blocks = vec![(
            Ensemble::DeepEns,
            "standard (λ=1)".to_owned(),
            desc(&self.lambdas),
        )];
        if self.multi_head != HeadData::Off {
            blocks.push((
                Ensemble::MultiHead,
                "multi-head head 0 (λ=1)".to_owned(),
                desc(&self.multi_head_lambdas),
            ));
        }
        for (e, nominal, lambdas) in blocks {
            let p = e.label();
            push(nominal, e, Strategy::Nominal);
            for l in lambdas {
                push(format!("{p} λ={l}"), e, Strategy::Tradeoff { lambda: l });
            }
            push(format!("{p} mean"), e, Strategy::Mean);
            for &c in &self.uwo_cs {
                push(format!("{p} UWO c={c}"), e, Strategy::Uwo { c });
            }
        }
        out
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

/// One ensemble on one seed, after standardisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Members {
    pub ensemble: Ensemble,
    /// Diagonal accuracy (prompts out of 8) of each member, the nominal first.
    pub correct: Vec<usize>,
    /// Variance across members, averaged over the cells some preference pair covers (the
    /// diagonal and the rejected responses) and over the cells none covers: how much the
    /// members disagree where the data pins them down and where it does not.
    pub var_covered: f64,
    pub var_uncovered: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedResult {
    pub seed: u64,
    /// The deep ensemble, then the multi-head RM if it runs.
    pub members: Vec<Members>,
    pub outcomes: Vec<Outcome>,
    /// Tables of the first seed, for the heatmaps: RMs then the final policies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tables: Option<Tables>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tables {
    pub rms: Vec<Table>,
    /// The multi-head RM's heads (empty when it does not run).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heads: Vec<Table>,
    pub rewards: Vec<Table>,
    pub policies: Vec<Table>,
}

/// Seed-level statistics of one condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConditionSummary {
    pub name: String,
    pub ensemble: Ensemble,
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

/// Condition `a` against condition `b`, seed by seed (prompts right).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contrast {
    pub a: String,
    pub b: String,
    pub wins: usize,
    pub losses: usize,
    pub ties: usize,
    pub sign_test_p: f64,
}

/// One ensemble over all seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnsembleSummary {
    pub ensemble: Ensemble,
    /// Diagonal accuracy (fraction of prompts) of the nominal member and of all members.
    pub nominal_accuracy: f64,
    pub member_accuracy: f64,
    pub var_covered: f64,
    pub var_uncovered: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToyResult {
    pub config: ToyConfig,
    /// Mean diagonal accuracy of the nominal RM (fraction of prompts).
    pub rm_diagonal_accuracy: f64,
    pub ensembles: Vec<EnsembleSummary>,
    pub conditions: Vec<ConditionSummary>,
    /// Every robust or UWO condition against its own ensemble's mean: pessimism vs averaging.
    pub vs_mean: Vec<Contrast>,
    /// Every multi-head condition against the deep-ensemble one with the same strategy.
    pub multi_vs_deep: Vec<Contrast>,
    pub seeds: Vec<SeedResult>,
}

fn mix(seed: u64, stream: u64) -> u64 {
    Rng::new(seed.wrapping_mul(rrlhf_robust::rng::GOLDEN) ^ stream).next_u64()
}

/// The member tables of a trained RM: one per head, standardised if asked.
fn head_tables(rm: &RewardModel, standardized: bool) -> Vec<Table> {
    let t = rm.tables();
    (0..rm.heads() as i64)
        .map(|h| {
            let mut table = rows(&t.get(h));
            if standardized {
                standardize(&mut table);
            }
            table
        })
        .collect()
}

fn members(ensemble: Ensemble, tables: &[Table], pairs: &[Pair]) -> Members {
    let mut covered = [[false; N]; N];
    for &(x, c, r) in pairs {
        covered[x][c] = true;
        covered[x][r] = true;
    }
    let (mut sums, mut counts) = ([0.0; 2], [0usize; 2]);
    for x in 0..N {
        for a in 0..N {
            let v: Vec<f64> = tables.iter().map(|t| t[x][a] as f64).collect();
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let var = v.iter().map(|y| (y - mean).powi(2)).sum::<f64>() / v.len() as f64;
            let i = usize::from(!covered[x][a]);
            sums[i] += var;
            counts[i] += 1;
        }
    }
    Members {
        ensemble,
        correct: tables.iter().map(|t| diagonal_hits(t)).collect(),
        var_covered: sums[0] / counts[0].max(1) as f64,
        var_uncovered: sums[1] / counts[1].max(1) as f64,
    }
}

/// Every cell as K "heads": head 0 is the nominal member (σ = 0 makes it the nominal).
fn cells(tables: &[Table]) -> Vec<HeadOutputs> {
    (0..N * N)
        .map(|i| HeadOutputs {
            mu: tables.iter().map(|t| t[i / N][i % N]).collect(),
            sigma: (0..tables.len())
                .map(|k| if k == 0 { 0.0 } else { 1.0 })
                .collect(),
        })
        .collect()
}

/// Runs one seed: data, RMs, every condition.
pub fn run_seed(cfg: &ToyConfig, seed: u64, keep_tables: bool) -> anyhow::Result<SeedResult> {
    let pairs = preferences(cfg.pairs_per_prompt, mix(seed, 1));
    let mut rms = Vec::new();
    for k in 0..=cfg.extra_rms {
        let rm = RewardModel::new(cfg.rm_arch, cfg.rm_hidden, mix(seed, 100 + k as u64));
        rm.train(&pairs, cfg.rm_steps, cfg.rm_lr)?;
        rms.extend(head_tables(&rm, cfg.standardize));
    }
    let heads = if cfg.multi_head == HeadData::Off {
        Vec::new()
    } else {
        let k = cfg.extra_rms + 1;
        let rm = RewardModel::with_heads(cfg.rm_arch, cfg.rm_hidden, k, mix(seed, 200));
        if cfg.multi_head == HeadData::Partition {
            rm.train_heads(&partition(&pairs, k, mix(seed, 4)), cfg.rm_steps, cfg.rm_lr)?;
        } else {
            rm.train(&pairs, cfg.rm_steps, cfg.rm_lr)?;
        }
        head_tables(&rm, cfg.standardize)
    };
    let mut all_members = vec![members(Ensemble::DeepEns, &rms, &pairs)];
    if !heads.is_empty() {
        all_members.push(members(Ensemble::MultiHead, &heads, &pairs));
    }
    let (deep_cells, head_cells) = (cells(&rms), cells(&heads));
    let (mut outcomes, mut rewards, mut policies) = (Vec::new(), Vec::new(), Vec::new());
    for c in cfg.conditions() {
        let from = match c.ensemble {
            Ensemble::DeepEns => &deep_cells,
            Ensemble::MultiHead => &head_cells,
        };
        let agg = aggregate(from, c.strategy, UncertaintySet::Mean, seed)?;
        let table: Table = agg
            .chunks(N)
            .map(|r| r.iter().map(|a| a.reward).collect())
            .collect();
        // Every condition starts from the same policy and sampling stream: paired seeds.
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
        members: all_members,
        outcomes,
        tables: keep_tables.then_some(Tables {
            rms,
            heads,
            rewards,
            policies,
        }),
    })
}

/// Seeds where condition `a` gets more prompts right than `b`, fewer, as many.
fn paired(results: &[SeedResult], a: usize, b: usize) -> (usize, usize, usize) {
    let (mut wins, mut losses, mut ties) = (0, 0, 0);
    for r in results {
        match r.outcomes[a].correct.cmp(&r.outcomes[b].correct) {
            std::cmp::Ordering::Greater => wins += 1,
            std::cmp::Ordering::Less => losses += 1,
            std::cmp::Ordering::Equal => ties += 1,
        }
    }
    (wins, losses, ties)
}

fn contrast(results: &[SeedResult], conds: &[Condition], a: usize, b: usize) -> Contrast {
    let (wins, losses, ties) = paired(results, a, b);
    Contrast {
        a: conds[a].name.clone(),
        b: conds[b].name.clone(),
        wins,
        losses,
        ties,
        sign_test_p: sign_test(wins, losses),
    }
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
    let conds = cfg.conditions();
    let conditions = conds
        .iter()
        .enumerate()
        .map(|(c, cond)| {
            let xs: Vec<f64> = results
                .iter()
                .map(|r| r.outcomes[c].correct as f64)
                .collect();
            let (mean, se) = mean_se(&xs);
            let (wins, losses, ties) = paired(&results, c, 0);
            ConditionSummary {
                name: cond.name.clone(),
                ensemble: cond.ensemble,
                strategy: cond.strategy.to_string(),
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
    let find = |e: Ensemble, s: Strategy| {
        conds
            .iter()
            .position(|c| c.ensemble == e && c.strategy == s)
    };
    let mut vs_mean = Vec::new();
    let mut multi_vs_deep = Vec::new();
    for (i, c) in conds.iter().enumerate() {
        if !matches!(c.strategy, Strategy::Nominal | Strategy::Mean)
            && let Some(m) = find(c.ensemble, Strategy::Mean)
        {
            vs_mean.push(contrast(&results, &conds, i, m));
        }
        if c.ensemble == Ensemble::MultiHead
            && let Some(d) = find(Ensemble::DeepEns, c.strategy)
        {
            multi_vs_deep.push(contrast(&results, &conds, i, d));
        }
    }
    let ensembles: Vec<EnsembleSummary> = results[0]
        .members
        .iter()
        .enumerate()
        .map(|(e, m)| {
            let avg = |f: &dyn Fn(&Members) -> f64| {
                results.iter().map(|r| f(&r.members[e])).sum::<f64>() / n
            };
            EnsembleSummary {
                ensemble: m.ensemble,
                nominal_accuracy: avg(&|m| m.correct[0] as f64) / N as f64,
                member_accuracy: avg(&|m| {
                    m.correct.iter().sum::<usize>() as f64 / m.correct.len() as f64
                }) / N as f64,
                var_covered: avg(&|m| m.var_covered),
                var_uncovered: avg(&|m| m.var_uncovered),
            }
        })
        .collect();
    Ok(ToyResult {
        config: cfg.clone(),
        // The deep ensemble's nominal member is the nominal RM.
        rm_diagonal_accuracy: ensembles[0].nominal_accuracy,
        ensembles,
        conditions,
        vs_mean,
        multi_vs_deep,
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

    #[test]
    fn partition_deals_every_pair_once() {
        let p = preferences(2, 9);
        let parts = partition(&p, 4, 3);
        assert_eq!(parts.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 4, 4]);
        let mut all: Vec<Pair> = parts.concat();
        let mut want = p.clone();
        all.sort_unstable();
        want.sort_unstable();
        assert_eq!(all, want);
    }

    #[test]
    fn members_measure_disagreement_where_the_data_is_silent() {
        let pairs = vec![(0, 0, 1)];
        let a: Table = vec![vec![0.0; N]; N];
        let mut b = a.clone();
        b[0][0] = 2.0; // covered: (a − b)² / 4 = 1 on one of two covered cells
        b[3][4] = 4.0; // uncovered: 4 on one of 62 cells
        let m = members(Ensemble::DeepEns, &[a, b], &pairs);
        assert!((m.var_covered - 0.5).abs() < 1e-9, "{}", m.var_covered);
        assert!(
            (m.var_uncovered - 4.0 / 62.0).abs() < 1e-9,
            "{}",
            m.var_uncovered
        );
        assert_eq!(m.correct.len(), 2);
    }
}
