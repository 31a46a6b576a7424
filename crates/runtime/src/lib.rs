//! `rrlhf-runtime`: the parts every rrlhf service shares, so each service is only its model
//! engine and a thin tonic implementation.
//!
//! - [`config`]: figment layers — compiled defaults → TOML file → `RRLHF__SECTION__KEY`
//!   environment → command-line flags — validated after loading, errors naming the field.
//! - [`telemetry`]: tracing to stderr, text or JSON, with an `EnvFilter` that quiets h2/tower;
//!   spans also exported with OTLP/gRPC when `server.otlp_endpoint` is set.
//! - [`trace_context`]: W3C `traceparent` in gRPC metadata — a span per served RPC parented on
//!   the caller's, and an interceptor that sends the current span's context on client calls.
//! - [`server`]: the gRPC server around a service: `grpc.health.v1` (NOT_SERVING until the
//!   service says it can work), reflection, optional TLS and bearer-token auth, a message-size
//!   limit, a concurrency limit answered with RESOURCE_EXHAUSTED, and graceful shutdown.
//! - [`secrets`]: bearer tokens from files or the environment, and client TLS (private CA,
//!   client certificate for mutual TLS).
//! - [`engine`]: the model thread every service runs its model on (dynamic batching, panic
//!   isolation).
//! - [`service`]: the skeleton of the four model services — one config shape, the
//!   [`service::ModelService`] trait and its [`service::start`].

pub mod auth;
pub mod config;
pub mod engine;
pub mod limit;
pub mod metrics;
pub mod secrets;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod trace_context;
pub mod training_rpc;
pub mod validate;

pub use config::{ConfigError, EngineConfig, GroupPlace, ServerConfig, load_config};
pub use service::{ModelService, ModelServiceConfig, ServiceSettings};
