//! `rrlhf-train`: offline training jobs. For now supervised fine-tuning ([`sft`]); the
//! schedule and optimiser helpers are shared with the reward-model stages.

pub mod error;
pub mod optim;
pub mod schedule;
pub mod sft;

pub use error::{Result, TrainError};
