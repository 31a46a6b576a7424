//! The settings of LoRA adapters (Hu et al. 2021), without tensors: what a service's `[lora]`
//! table and the CLI's `--lora-*` flags hold. `rrlhf-model` builds the adapters from them.

use serde::{Deserialize, Serialize};

/// The modules of a Llama decoder layer that can carry an adapter, by their HF names.
pub const TARGETABLE: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// What to adapt and how (a service's `[lora]` table: `rank` and `alpha` required, `dropout`
/// 0 and every targetable module by default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank r of A and B.
    pub rank: i64,
    /// α: the adapter's output is scaled by α / r.
    pub alpha: f64,
    /// Dropout on the adapter's input while training.
    #[serde(default)]
    pub dropout: f64,
    /// Module names from [`TARGETABLE`].
    #[serde(default = "all_targetable")]
    pub target_modules: Vec<String>,
}

fn all_targetable() -> Vec<String> {
    TARGETABLE.iter().map(|m| m.to_string()).collect()
}

impl LoraConfig {
    /// Rank `rank`, scale `alpha`, no dropout, on the modules named in `targets` (HF names).
    pub fn new(rank: i64, alpha: f64, targets: &[&str]) -> Self {
        Self {
            rank,
            alpha,
            dropout: 0.0,
            target_modules: targets.iter().map(|m| m.to_string()).collect(),
        }
    }

    /// Checks every field; the message names the one that is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.rank < 1 {
            return Err(format!("lora rank must be ≥ 1, got {}", self.rank));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(format!("lora alpha must be > 0, got {}", self.alpha));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!(
                "lora dropout must be in [0, 1), got {}",
                self.dropout
            ));
        }
        if self.target_modules.is_empty() {
            return Err("lora target modules: none given".into());
        }
        if let Some(m) = self
            .target_modules
            .iter()
            .find(|m| !TARGETABLE.contains(&m.as_str()))
        {
            return Err(format!(
                "lora target module `{m}` is not one of {}",
                TARGETABLE.join(", ")
            ));
        }
        Ok(())
    }

    /// [`Self::validate`], and whether it can train with activation checkpointing: recomputed
    /// layers cannot replay the dropout masks of their first pass.
    pub fn validate_for(&self, activation_checkpointing: bool) -> Result<(), String> {
        self.validate()?;
        if activation_checkpointing && self.dropout > 0.0 {
            return Err(format!(
                "lora dropout must be 0 with activation checkpointing (recomputed layers cannot \
                 replay dropout), got {}",
                self.dropout
            ));
        }
        Ok(())
    }

    /// α / r, the factor on the adapter's output.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    pub fn targets(&self, module: &str) -> bool {
        self.target_modules.iter().any(|m| m == module)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(targets: &[&str]) -> LoraConfig {
        LoraConfig::new(4, 8.0, targets)
    }

    #[test]
    fn bad_configs_name_the_field() {
        for (c, needle) in [
            (
                LoraConfig {
                    rank: 0,
                    ..cfg(&["q_proj"])
                },
                "rank",
            ),
            (
                LoraConfig {
                    alpha: f64::NAN,
                    ..cfg(&["q_proj"])
                },
                "alpha",
            ),
            (
                LoraConfig {
                    dropout: 1.0,
                    ..cfg(&["q_proj"])
                },
                "dropout",
            ),
            (cfg(&[]), "target modules"),
            (cfg(&["lm_head"]), "`lm_head`"),
        ] {
            let e = c.validate().unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
        assert!(cfg(&["q_proj", "down_proj"]).validate().is_ok());
        let dropout = LoraConfig {
            dropout: 0.1,
            ..cfg(&["q_proj"])
        };
        assert!(dropout.validate_for(false).is_ok());
        let e = dropout.validate_for(true).unwrap_err();
        assert!(e.contains("activation checkpointing"), "{e}");
    }
}
