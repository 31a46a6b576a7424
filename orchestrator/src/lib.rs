//! `rrlhf-orchestrator`: drives reward-robust PPO across the four rrlhf services.
//!
//! One step: prompts → the actor's `Generate` stream; each sample, as it arrives, goes to the
//! reward service's `ScoreStream`, the reference's `LogProbs` and the critic's `Values`
//! concurrently; the assembled batch gets the robust objective ([`rrlhf_robust`]), the KL
//! penalty, GAE and whitening ([`rrlhf_ppo`]); then actor and critic `Train` on their shards.
//!
//! - [`config`]: the run's configuration, validated with field names.
//! - [`error`]: the one error type, [`OrchestratorError`].
//! - [`clients`]: gRPC clients with bearer auth, round-robin replicas and retry with backoff.
//! - [`prompts`]: prompt sources and the resumable, seeded data cursor.
//! - [`experience`]: the streamed rollout and its fan-out.
//! - [`sources`]: several reward sources normalised and fused into one uncertainty set.
//! - [`step`]: robust rewards, PPO math and the training calls of one step.
//! - [`metrics`]: per-step metrics (JSONL, Prometheus).
//! - [`checkpoint`]: atomic run checkpoints (services + orchestrator state) and resume.
//! - [`instances`]: which process serves each trained rank (restart detection).
//! - [`record`]: each run's state on disk, so a restarted orchestrator lists and resumes it.
//! - [`lock`]: one orchestrator per run directory.
//! - [`patch`]: live changes of λ, strategy and β, checked and applied whole.
//! - [`run`]: the run lifecycle (created → running ⇄ paused → finished | stopped | failed).
//! - [`samples`]: the bounded store of scored samples the dashboard shows.
//! - [`rest`]: the REST control API (axum) with its OpenAPI document.
//! - [`report`]: plots and the short report written at the end of a run.

pub mod checkpoint;
pub mod clients;
pub mod config;
pub mod error;
pub mod experience;
pub mod instances;
pub mod lock;
pub mod metrics;
pub mod patch;
pub mod prompts;
pub mod record;
pub mod report;
pub mod rest;
pub mod run;
pub mod samples;
pub mod sources;
pub mod step;

pub use config::OrchestratorConfig;
pub use error::OrchestratorError;
pub use run::{Control, RunHandle, RunStatus, spawn_run};
