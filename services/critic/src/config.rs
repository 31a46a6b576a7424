//! Critic-service configuration: the shared model-service config (`[server]`, `[engine]`,
//! `model` — a stage-1 Bradley–Terry reward model, or a saved critic — and `max_length`) plus
//! the training services' `weight_decay`.

use rrlhf_runtime::ModelServiceConfig;
use rrlhf_runtime::service::{Port, TrainerSettings};

/// The critic's own settings; it listens on port 50081 by default.
pub type CriticSettings = TrainerSettings<Port<50081>>;

pub type CriticServiceConfig = ModelServiceConfig<CriticSettings>;
