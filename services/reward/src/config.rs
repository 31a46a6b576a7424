//! Reward-service configuration: the shared model-service config (`[server]`, `[engine]`,
//! `model` — a reward model from `rrlhf rm train` — and `max_length`) plus the reward service's
//! own settings: what to do with overlong samples and the default aggregation.

use rrlhf_robust::{Lambda, Strategy, StrategyName};
use rrlhf_runtime::service::invalid_setting;
use rrlhf_runtime::{ConfigError, ModelServiceConfig, ServiceSettings};
use serde::{Deserialize, Serialize};

/// What the service does with a sample longer than `max_length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlong {
    /// INVALID_ARGUMENT naming the sample.
    #[default]
    Reject,
    /// Score the prompt's tail and the response's head that fit.
    Truncate,
}

impl Overlong {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reject => "reject",
            Self::Truncate => "truncate",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RewardSettings {
    /// `reject` or `truncate` samples longer than `max_length`.
    pub overlong: Overlong,
    /// Strategy when a request names none (`tradeoff`, `nominal`, `min`, …).
    pub default_strategy: StrategyName,
    /// λ when a request asks for `tradeoff`/`batch_worst_head` without one.
    pub default_lambda: Lambda,
    /// c when a request asks for `uwo` without one.
    pub default_uwo_c: f32,
}

impl Default for RewardSettings {
    fn default() -> Self {
        Self {
            overlong: Overlong::Reject,
            default_strategy: StrategyName::Tradeoff,
            default_lambda: Lambda::new(0.4).expect("0.4 is in [0, 1]"),
            default_uwo_c: 1.0,
        }
    }
}

impl ServiceSettings for RewardSettings {
    const DEFAULT_PORT: u16 = 50061;
    const DEFAULT_MAX_LENGTH: usize = 1024;

    fn validate(&self) -> Result<(), ConfigError> {
        // The strategy owns the check of c.
        Strategy::from_name(StrategyName::Uwo, None, Some(self.default_uwo_c))
            .map(drop)
            .map_err(|e| invalid_setting("default_uwo_c", e.to_string()))
    }
}

impl RewardSettings {
    /// The strategy `name` with the defaults for its parameter, unless given.
    pub fn strategy(
        &self,
        name: StrategyName,
        lambda: Option<Lambda>,
        c: Option<f32>,
    ) -> rrlhf_robust::Result<Strategy> {
        Strategy::from_name(
            name,
            name.takes_lambda()
                .then(|| lambda.unwrap_or(self.default_lambda)),
            name.takes_c().then(|| c.unwrap_or(self.default_uwo_c)),
        )
    }
}

pub type RewardServiceConfig = ModelServiceConfig<RewardSettings>;
