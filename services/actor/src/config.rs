//! Actor-service configuration: the shared model-service config (`[server]`, `[engine]`,
//! `model` — the SFT model with its tokenizer, or a saved actor — and `max_length`) plus the
//! training services' `weight_decay`.

use rrlhf_runtime::ModelServiceConfig;
use rrlhf_runtime::service::{Port, TrainerSettings};

/// The actor's own settings; it listens on port 50091 by default.
pub type ActorSettings = TrainerSettings<Port<50091>>;

pub type ActorServiceConfig = ModelServiceConfig<ActorSettings>;
