//! Heads on top of the backbone's hidden states: the LM head (tied or not), the per-token
//! value head used by the PPO critic, and the BRME head of K Gaussians (μ, σ > 0).

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::llama::{Linear, ParamInit, linear};

/// Projects hidden states to vocabulary logits; with tied embeddings it reuses the input
/// embedding matrix, as transformers does for `tie_word_embeddings = true`.
#[derive(Debug)]
pub enum LmHead {
    Tied(Tensor),
    Own(Linear),
}

impl LmHead {
    /// `root` is the VarStore root: the untied head lives at `lm_head.weight`.
    pub fn new(
        root: &nn::Path,
        embed_weight: &Tensor,
        hidden: i64,
        vocab: i64,
        tied: bool,
        fill: ParamInit,
    ) -> Self {
        if tied {
            Self::Tied(embed_weight.shallow_clone())
        } else {
            Self::Own(linear(root / "lm_head", hidden, vocab, false, fill))
        }
    }
}

impl Module for LmHead {
    fn forward(&self, xs: &Tensor) -> Tensor {
        match self {
            Self::Tied(w) => xs.matmul(&w.tr()),
            Self::Own(l) => l.forward(xs),
        }
    }
}

/// Scalar per position (`score.weight`, no bias, as in HF `*ForSequenceClassification`).
#[derive(Debug)]
pub struct ValueHead {
    score: Linear,
}

impl ValueHead {
    pub fn new(p: nn::Path, hidden: i64, fill: ParamInit) -> Self {
        Self {
            score: linear(p, hidden, 1, false, fill),
        }
    }

    /// `[.., H]` → `[..]` in f32.
    pub fn forward(&self, hidden: &Tensor) -> Tensor {
        self.score
            .forward(hidden)
            .squeeze_dim(-1)
            .to_kind(Kind::Float)
    }
}

/// K Gaussian reward heads: `mu` and `sigma` projections to K outputs each; σ = softplus(raw),
/// so it is strictly positive and smooth.
#[derive(Debug)]
pub struct BrmeHead {
    mu: Linear,
    sigma: Linear,
    pub heads: i64,
}

impl BrmeHead {
    pub fn new(p: nn::Path, hidden: i64, heads: i64, fill: ParamInit) -> Self {
        Self {
            mu: linear(&p / "mu", hidden, heads, true, fill),
            sigma: linear(&p / "sigma", hidden, heads, true, fill),
            heads,
        }
    }

    /// `[.., H]` → (μ `[.., K]`, σ `[.., K]`) in f32.
    pub fn forward(&self, hidden: &Tensor) -> (Tensor, Tensor) {
        let mu = self.mu.forward(hidden).to_kind(Kind::Float);
        let sigma = self.sigma.forward(hidden).to_kind(Kind::Float).softplus();
        (mu, sigma)
    }

    /// Head `h` alone: `[.., H]` → (μ `[..]`, σ `[..]`) in f32 (a head on its own tower): only
    /// row h of each projection, not all K.
    pub fn forward_one(&self, hidden: &Tensor, h: i64) -> (Tensor, Tensor) {
        let row = |l: &Linear| {
            let out = hidden.matmul(&l.ws.get(h));
            match &l.bs {
                Some(b) => out + b.get(h),
                None => out,
            }
            .to_kind(Kind::Float)
        };
        (row(&self.mu), row(&self.sigma).softplus())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn heads_have_hf_names_shapes_and_positive_sigma() {
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let value = ValueHead::new(&root / "score", 16, ParamInit::Random);
        let brme = BrmeHead::new(&root / "brme", 16, 5, ParamInit::Random);
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "brme.mu.bias",
                "brme.mu.weight",
                "brme.sigma.bias",
                "brme.sigma.weight",
                "score.weight"
            ]
        );
        let hidden = Tensor::randn([2, 7, 16], (Kind::Float, Device::Cpu)) * 50.0;
        assert_eq!(value.forward(&hidden).size(), [2, 7]);
        let (mu, sigma) = brme.forward(&hidden);
        assert_eq!(mu.size(), [2, 7, 5]);
        assert_eq!(sigma.size(), [2, 7, 5]);
        assert!(
            sigma.min().double_value(&[]) > 0.0,
            "σ must be strictly positive"
        );
    }
}
