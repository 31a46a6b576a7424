//! Reference-service configuration: `[server]`, `[engine]`, the model and its length limit.

use std::path::PathBuf;

use rrlhf_runtime::{ConfigError, EngineConfig, ServerConfig};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReferenceServiceConfig {
    pub server: ServerConfig,
    pub engine: EngineConfig,
    /// The SFT model directory (the policy PPO starts from).
    pub model: PathBuf,
    /// Longest prompt + response, in tokens.
    pub max_length: usize,
}

impl Default for ReferenceServiceConfig {
    fn default() -> Self {
        Self {
            server: ServerConfig {
                addr: "127.0.0.1:50071".into(),
                ..ServerConfig::default()
            },
            engine: EngineConfig::default(),
            model: PathBuf::new(),
            max_length: 2048,
        }
    }
}

impl ReferenceServiceConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.engine.validate()?;
        if self.model.as_os_str().is_empty() || !self.model.join("config.json").exists() {
            return Err(ConfigError::Invalid {
                field: "model".into(),
                message: format!("{:?} is not a model directory (no config.json)", self.model),
            });
        }
        if self.max_length < 2 {
            return Err(ConfigError::Invalid {
                field: "max_length".into(),
                message: "must be ≥ 2".into(),
            });
        }
        Ok(())
    }
}
