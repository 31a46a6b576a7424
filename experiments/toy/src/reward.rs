//! Preference data from an ideal annotator, the two RM architectures, Bradley–Terry training.

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

pub struct RewardModel {
    net: Mlp,
    arch: RmArch,
}

impl RewardModel {
    pub fn new(arch: RmArch, hidden: i64, seed: u64) -> Self {
        let net = match arch {
            RmArch::Joint => Mlp::new(2 * N as i64, hidden, 1, seed),
            RmArch::PerPrompt => Mlp::new(N as i64, hidden, N as i64, seed),
        };
        Self { net, arch }
    }

    /// Scores of every (prompt, response): `[N, N]`.
    pub fn table(&self) -> Tensor {
        match self.arch {
            RmArch::PerPrompt => self.net.forward(&one_hots(N)),
            RmArch::Joint => {
                let eye = one_hots(N);
                let prompts = eye.repeat_interleave_self_int(N as i64, 0, None);
                let responses = eye.repeat([N as i64, 1]);
                self.net
                    .forward(&Tensor::cat(&[prompts, responses], 1))
                    .view([N as i64, N as i64])
            }
        }
    }

    /// Full-batch Bradley–Terry training: minimises −log σ(r(x, chosen) − r(x, rejected)).
    pub fn train(&self, pairs: &[Pair], steps: usize, lr: f64) -> anyhow::Result<()> {
        let idx = |f: fn(&Pair) -> usize| {
            Tensor::from_slice(&pairs.iter().map(|p| f(p) as i64).collect::<Vec<_>>())
        };
        let (x, c, r) = (idx(|p| p.0), idx(|p| p.1), idx(|p| p.2));
        let mut opt = AdamW::new(&self.net.vs, 0.0)?;
        for _ in 0..steps {
            let t = self.table();
            let margin = t.index(&[Some(&x), Some(&c)]) - t.index(&[Some(&x), Some(&r)]);
            let loss = -margin.log_sigmoid().mean(Kind::Float);
            opt.step(&loss, lr, 0.0)?;
        }
        Ok(())
    }
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
