//! Preference data from an ideal annotator, the two RM architectures (each with one head or
//! several on a shared trunk), Bradley–Terry training.

use rrlhf_robust::rng::Rng;
use rrlhf_train::optim::AdamW;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::N;
use crate::mlp::{Mlp, one_hots};

/// How a reward model sees a (prompt, response).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RmArch {
    /// One score from the concatenated one-hots of prompt and response (16 inputs → 1).
    Joint,
    /// Eight scores, one per response, from the prompt's one-hot (8 inputs → 8).
    PerPrompt,
}

impl std::str::FromStr for RmArch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "joint" => Ok(Self::Joint),
            "per-prompt" => Ok(Self::PerPrompt),
            o => Err(format!(
                "unknown RM architecture `{o}` (joint or per-prompt)"
            )),
        }
    }
}

/// (prompt, chosen, rejected): chosen is always the diagonal response.
pub type Pair = (usize, usize, usize);

/// For every prompt, the diagonal preferred over `per_prompt` distinct random other responses.
pub fn preferences(per_prompt: usize, seed: u64) -> Vec<Pair> {
    let mut rng = Rng::new(seed);
    let mut pairs = Vec::new();
    for x in 0..N {
        let mut others: Vec<usize> = (0..N).filter(|&a| a != x).collect();
        for i in 0..per_prompt.min(N - 1) {
            let j = i + (rng.next_u64() % (others.len() - i) as u64) as usize;
            others.swap(i, j);
            pairs.push((x, x, others[i]));
        }
    }
    pairs
}

/// Which pairs each head of a multi-head RM is trained on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeadData {
    /// No multi-head RM: only the deep ensemble of independently trained RMs.
    Off,
    /// Every head on every pair: the heads differ only by their initialisation, like the deep
    /// ensemble's members, so a comparison isolates the shared trunk.
    All,
    /// Each head on its own share of the pairs (shuffled, then dealt round-robin), as the
    /// paper's BRME stage 2 trains each head on its own partition of the data.
    Partition,
}

impl std::str::FromStr for HeadData {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Self::Off),
            "all" => Ok(Self::All),
            "partition" => Ok(Self::Partition),
            o => Err(format!(
                "unknown multi-head data `{o}` (off, all or partition)"
            )),
        }
    }
}

/// A Bradley–Terry RM with `heads` output heads on one shared trunk (the MLP's first two
/// layers); its last layer holds every head's weights. One head is a plain RM.
pub struct RewardModel {
    net: Mlp,
    arch: RmArch,
    heads: usize,
}

impl RewardModel {
    pub fn new(arch: RmArch, hidden: i64, seed: u64) -> Self {
        Self::with_heads(arch, hidden, 1, seed)
    }

    /// `heads` heads sharing one trunk; with one head the weights are those of [`Self::new`].
    pub fn with_heads(arch: RmArch, hidden: i64, heads: usize, seed: u64) -> Self {
        let k = heads as i64;
        let net = match arch {
            RmArch::Joint => Mlp::new(2 * N as i64, hidden, k, seed),
            RmArch::PerPrompt => Mlp::new(N as i64, hidden, k * N as i64, seed),
        };
        Self { net, arch, heads }
    }

    pub fn heads(&self) -> usize {
        self.heads
    }

    /// Scores of every head and (prompt, response): `[K, N, N]`.
    pub fn tables(&self) -> Tensor {
        let (k, n) = (self.heads as i64, N as i64);
        match self.arch {
            // [N prompts, K·N] → [K, N, N]: head h's scores are the h-th block of N outputs.
            RmArch::PerPrompt => self
                .net
                .forward(&one_hots(N))
                .view([n, k, n])
                .permute([1, 0, 2]),
            RmArch::Joint => {
                let eye = one_hots(N);
                let prompts = eye.repeat_interleave_self_int(n, 0, None);
                let responses = eye.repeat([n, 1]);
                self.net
                    .forward(&Tensor::cat(&[prompts, responses], 1))
                    .transpose(0, 1)
                    .reshape([k, n, n])
            }
        }
    }

    /// Head 0's scores of every (prompt, response): `[N, N]`.
    pub fn table(&self) -> Tensor {
        self.tables().get(0)
    }

    /// Full-batch Bradley–Terry training of every head on every pair: minimises
    /// −log σ(r(x, chosen) − r(x, rejected)), averaged over pairs and heads.
    pub fn train(&self, pairs: &[Pair], steps: usize, lr: f64) -> anyhow::Result<()> {
        let all = vec![pairs.to_vec(); self.heads];
        self.train_heads(&all, steps, lr)
    }

    /// As [`Self::train`], head h on `per_head[h]` only. Each head's loss is its own mean, so a
    /// head with fewer pairs weighs as much in the shared trunk's gradient as one with more.
    pub fn train_heads(&self, per_head: &[Vec<Pair>], steps: usize, lr: f64) -> anyhow::Result<()> {
        anyhow::ensure!(
            per_head.len() == self.heads && per_head.iter().all(|p| !p.is_empty()),
            "train_heads: {} pair sets for {} heads, each needs ≥ 1 pair",
            per_head.len(),
            self.heads
        );
        let (mut h, mut x, mut c, mut r, mut w) = (vec![], vec![], vec![], vec![], vec![]);
        for (head, pairs) in per_head.iter().enumerate() {
            for p in pairs {
                h.push(head as i64);
                x.push(p.0 as i64);
                c.push(p.1 as i64);
                r.push(p.2 as i64);
                w.push(1.0 / (pairs.len() * self.heads) as f32);
            }
        }
        // Equal shares (every head on all pairs) make the weights uniform: a plain mean, which
        // keeps a one-head RM's training exactly what it was before heads existed.
        let uniform = per_head.iter().all(|p| p.len() == per_head[0].len());
        let (h, x, c, r, w) = (
            Tensor::from_slice(&h),
            Tensor::from_slice(&x),
            Tensor::from_slice(&c),
            Tensor::from_slice(&r),
            Tensor::from_slice(&w),
        );
        let mut opt = AdamW::new(&self.net.vs, 0.0)?;
        for _ in 0..steps {
            let t = self.tables();
            let margin =
                t.index(&[Some(&h), Some(&x), Some(&c)]) - t.index(&[Some(&h), Some(&x), Some(&r)]);
            let nll = -margin.log_sigmoid();
            let loss = if uniform {
                nll.mean(Kind::Float)
            } else {
                (nll * &w).sum(Kind::Float)
            };
            opt.step(&loss, lr, 0.0)?;
        }
        Ok(())
    }
}

/// BRME-style partition: the pairs shuffled by `seed`, then dealt to `heads` heads in turn.
pub fn partition(pairs: &[Pair], heads: usize, seed: u64) -> Vec<Vec<Pair>> {
    let mut order = pairs.to_vec();
    let mut rng = Rng::new(seed);
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let mut out = vec![Vec::new(); heads];
    for (i, p) in order.into_iter().enumerate() {
        out[i % heads].push(p);
    }
    out
}

/// A table's rows as plain numbers.
pub fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    let flat: Vec<f32> = Vec::try_from(t.detach().flatten(0, -1)).expect("f32 table");
    flat.chunks(N).map(<[f32]>::to_vec).collect()
}

/// Zero mean, unit standard deviation over all cells: Bradley–Terry fixes a reward only up to a
/// shift (and, across seeds, a scale), so RMs are put on one scale before a min is taken.
pub fn standardize(table: &mut [Vec<f32>]) {
    let all: Vec<f64> = table.iter().flatten().map(|&v| v as f64).collect();
    let mean = all.iter().sum::<f64>() / all.len() as f64;
    let sd = (all.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / all.len() as f64).sqrt();
    for v in table.iter_mut().flatten() {
        *v = ((*v as f64 - mean) / sd.max(1e-8)) as f32;
    }
}

/// How many prompts have their diagonal response as the table's best.
pub fn diagonal_hits(table: &[Vec<f32>]) -> usize {
    table
        .iter()
        .enumerate()
        .filter(|(x, row)| argmax(row) == *x)
        .count()
}

pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}
