//! Stage 2's sources of head diversity. Heads that share everything but one linear row learn
//! the same features and barely disagree, so the robust objective's min is the nominal reward
//! shifted; these options make them differ: towers (per-head copies of the top decoder layers,
//! [`rrlhf_model::tower`]), per-head noise on the towers' starting weights, and per-head
//! bootstrap resamples of the pairs instead of a partition.

use rrlhf_model::RewardModel;
use tch::{Kind, Tensor};

/// Stage 2's sources of head diversity (all off: the paper's BRME, heads differing only in
/// their data partition and their rows of the μ/σ projections).
#[derive(Debug, Clone, Default)]
pub struct HeadDiversity {
    /// How the training pairs reach the heads.
    pub data: HeadData,
    /// Decoder layers each head owns (copied from the top of the stage-1 backbone); 0 = none.
    pub tower_layers: usize,
    /// Relative std of Gaussian noise added to each tower's copied matrices, drawn per head
    /// (`w += noise · std(w) · N(0, 1)`), so towers also start apart.
    pub tower_init_noise: f64,
}

/// How stage 2 deals the training pairs to the heads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadData {
    /// Each pair trains exactly one head (appendix B.2): every head sees ~1/K of the data.
    #[default]
    Partition,
    /// Each head trains on its own resample (with replacement) of all training pairs, as a
    /// bootstrap ensemble does: heads see ~63% of the pairs each, some several times.
    Bootstrap,
}

impl std::str::FromStr for HeadData {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "partition" => Ok(Self::Partition),
            "bootstrap" => Ok(Self::Bootstrap),
            o => Err(format!("unknown head data `{o}` (partition or bootstrap)")),
        }
    }
}

/// Eq. (8) for every head at once, each pair weighted per head by how often the head's
/// bootstrap resample drew it: `Σ w·((μ⁺ + ε⁺σ⁺ − t⁺)² + (μ⁻ + ε⁻σ⁻ − t⁻)²) / (n·K)`. Each head
/// draws n pairs, so the weights average 1 and the scale matches the partition's loss.
pub(crate) fn bootstrap_mse(
    (mu_c, sig_c, eps_c): (&Tensor, &Tensor, &Tensor),
    (mu_r, sig_r, eps_r): (&Tensor, &Tensor, &Tensor),
    p_hat: &Tensor,
    weights: &Tensor,
    alpha: f64,
) -> Tensor {
    let r_pos = mu_c + eps_c * sig_c;
    let r_neg = mu_r + eps_r * sig_r;
    let target_pos = (p_hat - 0.5) * alpha;
    let target_neg = (p_hat.ones_like() - p_hat - 0.5) * alpha;
    let per = (r_pos - target_pos).square() + (r_neg - target_neg).square();
    (per * weights).mean(Kind::Float)
}

/// Per-head bootstrap counts, row-major `[n, K]`: head h draws n pairs with replacement.
pub fn bootstrap_weights(n: usize, heads: i64, seed: u64) -> Vec<f32> {
    let k = heads as usize;
    let mut weights = vec![0.0f32; n * k];
    for h in 0..k {
        let mut rng =
            rrlhf_util::rng::Rng::new(rrlhf_util::rng::stream_seed(seed, 0xB007 + h as u64));
        for _ in 0..n {
            let i = (rng.next_u64() % n as u64) as usize;
            weights[i * k + h] += 1.0;
        }
    }
    weights
}

/// Adds `noise · std(w) · N(0, 1)` to every matrix of head h's tower, drawn from a per-head
/// seed, so the towers (copies of the same layers) start apart.
pub(crate) fn perturb_towers(model: &RewardModel, noise: f64, seed: u64) {
    if noise == 0.0 {
        return;
    }
    let _guard = tch::no_grad_guard();
    let mut vars: Vec<(String, Tensor)> = model
        .vs
        .variables()
        .into_iter()
        .filter(|(name, t)| name.starts_with("brme.towers.") && t.dim() >= 2)
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, mut t) in vars {
        let head: i64 = name
            .trim_start_matches("brme.towers.")
            .split('.')
            .next()
            .and_then(|h| h.parse().ok())
            .unwrap_or(0);
        tch::manual_seed((seed as i64).wrapping_mul(1_000_003).wrapping_add(head));
        let std = t.to_kind(Kind::Float).std(true).double_value(&[]);
        let delta =
            (Tensor::randn(t.size(), (Kind::Float, t.device())) * (noise * std)).to_kind(t.kind());
        let _ = t.f_add_(&delta);
    }
}
