//! `rrlhf-reference-service`: the frozen reference policy π₀ of PPO's KL penalty behind gRPC
//! (`rrlhf.reference.v1.ReferenceService`). Same shape as every service: [`config`], the model
//! thread (an [`rrlhf_runtime::engine::Engine`] holding a frozen [`rrlhf_model::CausalLm`]) and
//! the thin tonic implementation in [`service`].

pub mod config;
pub mod service;

pub use config::ReferenceServiceConfig;
pub use service::{Running, start};
