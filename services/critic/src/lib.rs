//! `rrlhf-critic-service`: PPO's value model behind gRPC (`rrlhf.critic.v1.CriticService`),
//! initialised from a stage-1 reward model. The same files as every service: [`config`];
//! [`engine`] (the critic and its training step, owned by the engine thread); [`convert`]
//! (request validation); [`service`] (the tonic implementation and the
//! [`rrlhf_runtime::ModelService`] the runtime starts). Its errors are the runtime's:
//! INVALID_ARGUMENT from validation, the engine's own mapping for everything else.

pub mod config;
pub mod convert;
pub mod engine;
pub mod service;

pub use config::{CriticServiceConfig, CriticSettings};
pub use service::{CriticServer, Running, start};
