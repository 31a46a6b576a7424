//! Reward-service configuration: `[server]` plus the model and batching settings.

use std::path::PathBuf;

use rrlhf_runtime::{ConfigError, EngineConfig, ServerConfig};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardServiceConfig {
    pub server: ServerConfig,
    pub engine: EngineConfig,
    /// Reward-model directory (`rrlhf rm train` output).
    pub model: PathBuf,
    /// Longest sample in tokens (prompt + response + EOS).
    pub max_length: usize,
    /// `reject` (INVALID_ARGUMENT) or `truncate` (prompt tail + response head) for longer samples.
    pub overlong: String,
    /// Strategy when a request names none (`tradeoff`, `nominal`, `min`, …).
    pub default_strategy: String,
    /// λ when a request asks for `tradeoff`/`batch_worst_head` without one.
    pub default_lambda: f32,
    /// c when a request asks for `uwo` without one.
    pub default_uwo_c: f32,
}

impl Default for RewardServiceConfig {
    fn default() -> Self {
        Self {
            server: ServerConfig {
                addr: "127.0.0.1:50061".into(),
                ..ServerConfig::default()
            },
            engine: EngineConfig::default(),
            model: PathBuf::new(),
            max_length: 1024,
            overlong: "reject".into(),
            default_strategy: "tradeoff".into(),
            default_lambda: 0.4,
            default_uwo_c: 1.0,
        }
    }
}

impl RewardServiceConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.engine.validate()?;
        let bad = |field: &str, message: String| {
            Err(ConfigError::Invalid {
                field: field.into(),
                message,
            })
        };
        if self.model.as_os_str().is_empty() {
            return bad("model", "is required (a reward-model directory)".into());
        }
        if !self.model.join("config.json").exists() {
            return bad(
                "model",
                format!("{} has no config.json", self.model.display()),
            );
        }
        if !matches!(self.overlong.as_str(), "reject" | "truncate") {
            return bad(
                "overlong",
                format!("must be `reject` or `truncate`, got {:?}", self.overlong),
            );
        }
        if self.max_length < 2 {
            return bad("max_length", "must be ≥ 2".into());
        }
        if !(0.0..=1.0).contains(&self.default_lambda) {
            return bad(
                "default_lambda",
                format!("must be in [0, 1], got {}", self.default_lambda),
            );
        }
        if !(self.default_uwo_c.is_finite() && self.default_uwo_c >= 0.0) {
            return bad(
                "default_uwo_c",
                format!("must be ≥ 0, got {}", self.default_uwo_c),
            );
        }
        Ok(())
    }
}
