//! `rrlhf-critic-service`: PPO's value model behind gRPC (`rrlhf.critic.v1.CriticService`),
//! initialised from a stage-1 reward model. [`config`]; [`model`] (the critic and its training
//! step, owned by the engine thread); [`service`] (validation and the tonic implementation).

pub mod config;
pub mod model;
pub mod service;

pub use config::CriticServiceConfig;
pub use service::{Running, start};
