//! `rrlhf-reward-service`: the reward service of rrlhf — a BRME (or Bradley–Terry) reward model
//! behind gRPC (`rrlhf.reward.v1.RewardService`), the API external pipelines call.
//!
//! Shape shared by every service: [`config`] (the `[server]` section plus the model's settings),
//! [`engine`] (the one thread that owns the model, merging concurrent requests into batches),
//! [`service`] (the thin tonic implementation: validation, tokenisation, aggregation) and
//! [`error`] (one mapping to gRPC status codes).

pub mod config;
pub mod engine;
pub mod error;
pub mod service;

pub use config::RewardServiceConfig;
pub use service::{RewardServer, start};
