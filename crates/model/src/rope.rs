//! Rotary position embeddings (Su et al. 2021) with the `linear` and Llama 3.1 (`llama3`)
//! frequency scaling, computed in f32 exactly as transformers' `LlamaRotaryEmbedding` does so
//! that logits match it to rounding.

use tch::{Device, Kind, Tensor};

use crate::config::{ModelConfig, RopeScaling};

/// Inverse frequencies and the cos/sin tables derived from explicit position ids.
#[derive(Debug)]
pub struct Rope {
    inv_freq: Tensor,
}

impl Rope {
    pub fn new(cfg: &ModelConfig, device: Device) -> Self {
        let dim = cfg.head_dim;
        let exponents = Tensor::arange_start_step(0, dim, 2, (Kind::Int64, Device::Cpu))
            .to_kind(Kind::Float)
            / dim as f64;
        let base = Tensor::from(cfg.rope_theta as f32);
        let mut inv_freq = base.pow(&exponents).reciprocal();
        match cfg.rope_scaling {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } => inv_freq /= factor,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old_ctx,
            } => {
                let low_freq_wavelen = old_ctx / low_freq_factor;
                let high_freq_wavelen = old_ctx / high_freq_factor;
                let wavelen = inv_freq.reciprocal() * (2.0 * std::f64::consts::PI);
                let scaled =
                    inv_freq.where_self(&wavelen.le(low_freq_wavelen), &(&inv_freq / factor));
                let smooth = ((wavelen.reciprocal() * old_ctx) - low_freq_factor)
                    / (high_freq_factor - low_freq_factor);
                let smoothed =
                    (smooth.ones_like() - &smooth) * &scaled / factor + &smooth * &scaled;
                let medium = wavelen
                    .ge(high_freq_wavelen)
                    .logical_and(&wavelen.le(low_freq_wavelen));
                inv_freq = smoothed.where_self(&medium, &scaled);
            }
        }
        Self {
            inv_freq: inv_freq.to_device(device),
        }
    }

    /// cos and sin tables of shape `[B, 1, T, head_dim]` for `positions` `[B, T]`, cast to `kind`.
    pub fn tables(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * self.inv_freq.view([1, 1, -1]);
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
        (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
    }
}

/// Applies the rotation to `x` `[B, H, T, D]`.
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    let x1 = x.narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    let rotated = Tensor::cat(&[&x2.neg(), &x1], 3);
    x * cos + rotated * sin
}
