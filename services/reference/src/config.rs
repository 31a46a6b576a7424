//! Reference-service configuration: the shared model-service config (`[server]`, `[engine]`,
//! `model` — the SFT model PPO starts from — and `max_length`); nothing of its own.

use rrlhf_runtime::ModelServiceConfig;
use rrlhf_runtime::service::{NoSettings, Port};

/// The reference service has no settings of its own; it listens on port 50071 by default.
pub type ReferenceSettings = NoSettings<Port<50071>>;

pub type ReferenceServiceConfig = ModelServiceConfig<ReferenceSettings>;
