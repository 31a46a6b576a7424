//! `rrlhf-reference-service`: the frozen reference policy π₀ of PPO's KL penalty behind gRPC
//! (`rrlhf.reference.v1.ReferenceService`). The same files as every service: [`config`];
//! [`engine`] (the frozen model on its engine thread); [`convert`] (request validation);
//! [`service`] (the tonic implementation and the [`rrlhf_runtime::ModelService`] the runtime
//! starts). Its errors are the runtime's: INVALID_ARGUMENT from validation, the engine's own
//! mapping for everything else.

pub mod config;
pub mod convert;
pub mod engine;
pub mod service;

pub use config::{ReferenceServiceConfig, ReferenceSettings};
pub use service::{ReferenceServer, Running, start};
