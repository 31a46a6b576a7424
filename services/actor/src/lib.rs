//! `rrlhf-actor-service`: the policy π_θ behind gRPC (`rrlhf.actor.v1.ActorService`): streamed
//! generation, log-probabilities and PPO updates. [`config`]; [`model`] (the policy and its PPO
//! step, owned by the engine thread); [`service`] (validation and the tonic implementation).

pub mod config;
pub mod model;
pub mod service;

pub use config::ActorServiceConfig;
pub use service::{Running, start};
