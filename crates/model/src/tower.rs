//! Per-head towers: private copies of the backbone's top decoder layers (and its final norm)
//! for each head of a BRME. The heads then share only the lower trunk and can learn different
//! features on their own data, instead of differing only in one linear row over one shared
//! representation — the diversity the robust objective needs (heads that disagree where the
//! proxy is wrong).

use tch::Tensor;
use tch::nn::{self, Module};

use crate::config::ModelConfig;
use crate::llama::{DecoderLayer, ParamInit, RmsNorm, Trunk};

/// `count` decoder layers and a final norm under `p` (`p/layers/{j}`, `p/norm`).
#[derive(Debug)]
pub struct Tower {
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
}

impl Tower {
    pub fn new(p: nn::Path, cfg: &ModelConfig, count: usize, fill: ParamInit) -> Self {
        let layers_path = &p / "layers";
        Self {
            layers: (0..count)
                .map(|j| DecoderLayer::new(&layers_path / j, cfg, fill))
                .collect(),
            norm: RmsNorm::new(&p / "norm", cfg.hidden_size, cfg.rms_norm_eps, fill),
        }
    }

    /// Final-norm hidden states `[B, T, H]` of this tower over the trunk's output.
    pub fn forward(&self, trunk: &Trunk) -> Tensor {
        let mut xs = trunk.hidden.shallow_clone();
        let mask = trunk.mask.as_ref();
        for layer in &self.layers {
            xs = if trunk.checkpointed {
                layer.forward_checkpointed(&xs, &trunk.cos, &trunk.sin, mask)
            } else {
                layer.forward(&xs, &trunk.cos, &trunk.sin, mask, None)
            };
        }
        self.norm.forward(&xs)
    }
}

/// The backbone tensor a tower tensor starts from: `brme.towers.{h}.layers.{j}.X` copies
/// `model.layers.{first + j}.X`, and `brme.towers.{h}.norm.weight` the backbone's final norm.
/// `None` for a name outside the towers.
pub fn source_of(name: &str, first: usize) -> Option<String> {
    let rest = name.strip_prefix("brme.towers.")?;
    let (_head, rest) = rest.split_once('.')?;
    if let Some(layer) = rest.strip_prefix("layers.") {
        let (j, tail) = layer.split_once('.')?;
        let j: usize = j.parse().ok()?;
        return Some(format!("model.layers.{}.{tail}", first + j));
    }
    (rest == "norm.weight").then(|| "model.norm.weight".to_owned())
}

#[cfg(test)]
mod tests {
    use super::source_of;

    #[test]
    fn tower_tensors_start_from_the_top_of_the_backbone() {
        assert_eq!(
            source_of("brme.towers.3.layers.1.mlp.up_proj.weight", 4).as_deref(),
            Some("model.layers.5.mlp.up_proj.weight")
        );
        assert_eq!(
            source_of("brme.towers.0.norm.weight", 4).as_deref(),
            Some("model.norm.weight")
        );
        assert_eq!(source_of("brme.mu.weight", 4), None);
        assert_eq!(source_of("model.norm.weight", 4), None);
    }
}
