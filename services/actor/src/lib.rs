//! `rrlhf-actor-service`: the policy π_θ behind gRPC (`rrlhf.actor.v1.ActorService`): streamed
//! generation, log-probabilities and PPO updates. The same files as every service: [`config`];
//! [`engine`] (the policy and its PPO step, owned by the engine thread); [`convert`] (request
//! validation); [`service`] (the tonic implementation and the [`rrlhf_runtime::ModelService`]
//! the runtime starts). Its errors are the runtime's: INVALID_ARGUMENT from validation, the
//! engine's own mapping for everything else.

pub mod config;
pub mod convert;
pub mod engine;
pub mod service;

pub use config::{ActorServiceConfig, ActorSettings};
pub use service::{ActorServer, Running, start};
