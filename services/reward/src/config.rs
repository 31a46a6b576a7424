//! Reward-service configuration: `[server]` plus the model and batching settings.

use std::path::PathBuf;

use rrlhf_runtime::{ConfigError, ServerConfig};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardServiceConfig {
    pub server: ServerConfig,
    /// Reward-model directory (`rrlhf rm train` output).
    pub model: PathBuf,
    /// `cpu`, `cuda`, `cuda:N`.
    pub device: String,
    /// `f32` or `bf16`.
    pub dtype: String,
    /// libtorch intra-op threads (0: one per core).
    pub threads: usize,
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
    /// Dynamic batching: at most this many sequences per model batch…
    pub batch_max_sequences: usize,
    /// …or this many padded tokens…
    pub batch_max_tokens: usize,
    /// …gathered for at most this long after the first request arrives.
    pub batch_wait_ms: u64,
    /// Requests waiting for the engine; beyond it calls get RESOURCE_EXHAUSTED.
    pub queue_capacity: usize,
}

impl Default for RewardServiceConfig {
    fn default() -> Self {
        Self {
            server: ServerConfig {
                addr: "127.0.0.1:50061".into(),
                ..ServerConfig::default()
            },
            model: PathBuf::new(),
            device: "cpu".into(),
            dtype: "f32".into(),
            threads: 0,
            max_length: 1024,
            overlong: "reject".into(),
            default_strategy: "tradeoff".into(),
            default_lambda: 0.4,
            default_uwo_c: 1.0,
            batch_max_sequences: 32,
            batch_max_tokens: 16_384,
            batch_wait_ms: 2,
            queue_capacity: 1024,
        }
    }
}

impl RewardServiceConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
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
        if self.batch_max_sequences == 0 || self.batch_max_tokens == 0 || self.queue_capacity == 0 {
            return bad(
                "batch_max_sequences",
                "batch and queue sizes must be ≥ 1".into(),
            );
        }
        Ok(())
    }
}
