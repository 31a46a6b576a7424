//! `rrlhf-robust`: the reward-robust objective of the paper (eq. 5–7) on plain `f32` data, with
//! no tensor library, so that the reward service and the orchestrator share one implementation.
//!
//! - [`summary`]: per-sample statistics of the K head rewards of a BRME — the nominal head
//!   (smallest σ), min, max, mean, median, variance.
//! - [`strategy`]: the aggregation strategies (`nominal`, `min`, `max`, `mean`, `median`,
//!   `tradeoff:λ`, `batch_worst_head:λ`, `uwo:c`, and the controls `random`, `random_min`,
//!   `constant`), their names and text form; [`lambda`]: λ, checked once where it enters.
//! - [`aggregate`](mod@aggregate): a strategy applied to a batch of head outputs.
//! - [`fusion`]: z-normalisation of several reward sources with calibration statistics.
//! - [`stats`]: the paired statistics experiments compare strategies with.

pub mod aggregate;
pub mod fusion;
/// The project's seeded generators (they live in `rrlhf-util`, shared with crates that do not
/// depend on this one).
pub use rrlhf_util::rng;
pub mod lambda;
pub mod stats;
pub mod strategy;
pub mod summary;

pub use aggregate::{Aggregated, aggregate};
pub use lambda::Lambda;
pub use strategy::{Strategy, StrategyName, UncertaintySet};
pub use summary::{HeadOutputs, SampleSummary, summarize};

/// Errors of the robust-objective math: bad parameters or shapes, named.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RobustError {
    #[error(
        "unknown strategy `{0}` (expected nominal, min, max, mean, median, tradeoff:λ, batch_worst_head:λ, uwo:c, random, random_min or constant)"
    )]
    UnknownStrategy(String),
    #[error("unknown uncertainty set `{0}` (expected mean or sampled)")]
    UnknownUncertaintySet(String),
    #[error("strategy `{strategy}` needs {param}, as in `{strategy}:{example}`")]
    MissingParameter {
        strategy: StrategyName,
        param: &'static str,
        example: &'static str,
    },
    #[error("strategy `{strategy}` has no {param} (use {takes_it})")]
    UnexpectedParameter {
        strategy: StrategyName,
        param: &'static str,
        takes_it: &'static str,
    },
    #[error("{name} must be {expected}, got {value}")]
    BadParameter {
        name: &'static str,
        expected: &'static str,
        value: String,
    },
    #[error("sample {index}: {message}")]
    BadSample { index: usize, message: String },
}

pub type Result<T, E = RobustError> = std::result::Result<T, E>;
