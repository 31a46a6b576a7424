//! Actor-service configuration: `[server]`, `[engine]`, the model and its length limit.

use std::path::PathBuf;

use rrlhf_runtime::{ConfigError, EngineConfig, ServerConfig};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActorServiceConfig {
    pub server: ServerConfig,
    pub engine: EngineConfig,
    /// The SFT model (with its tokenizer) or a saved actor.
    pub model: PathBuf,
    /// Longest prompt + response, in tokens.
    pub max_length: usize,
    /// AdamW weight decay.
    pub weight_decay: f64,
}

impl Default for ActorServiceConfig {
    fn default() -> Self {
        Self {
            server: ServerConfig {
                addr: "127.0.0.1:50091".into(),
                ..ServerConfig::default()
            },
            engine: EngineConfig::default(),
            model: PathBuf::new(),
            max_length: 2048,
            weight_decay: 0.0,
        }
    }
}

impl ActorServiceConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.engine.validate()?;
        let bad = |field: &str, message: String| {
            Err(ConfigError::Invalid {
                field: field.into(),
                message,
            })
        };
        if self.model.as_os_str().is_empty() || !self.model.join("config.json").exists() {
            return bad(
                "model",
                format!("{:?} is not a model directory (no config.json)", self.model),
            );
        }
        if self.max_length < 2 {
            return bad("max_length", "must be ≥ 2".into());
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(
                "weight_decay",
                format!("must be ≥ 0, got {}", self.weight_decay),
            );
        }
        Ok(())
    }
}
