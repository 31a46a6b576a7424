//! `rrlhf-reward-service`: the reward service of rrlhf — a BRME (or Bradley–Terry) reward model
//! behind gRPC (`rrlhf.reward.v1.RewardService`), the API external pipelines call.
//!
//! The same files as every service: [`config`] (the shared model-service config plus the
//! reward service's own settings), [`engine`] (the one thread that owns the model, merging
//! concurrent requests into batches), [`convert`] (request validation: strategy, tokenisation),
//! [`service`] (the tonic implementation and the [`rrlhf_runtime::ModelService`] the runtime
//! starts) and [`error`] (one mapping to gRPC status codes).

pub mod config;
pub mod convert;
pub mod engine;
pub mod error;
pub mod service;

pub use config::{Overlong, RewardServiceConfig, RewardSettings};
pub use service::{RewardServer, Running, start};
