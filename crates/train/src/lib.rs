//! `rrlhf-train`: offline training jobs — supervised fine-tuning ([`sft`]), the two reward-model
//! stages ([`rm`]) and reward-model evaluation and calibration ([`rm_eval`]) — and the
//! pieces the actor and critic services train with: AdamW ([`optim`]), data-parallel
//! updates over c10d ([`data_parallel`]) and the state that ties them to a model
//! ([`train_state`]).

pub mod data_parallel;
pub mod disagreement;
pub mod error;
pub mod optim;
pub mod progress;
pub mod rm;
pub mod rm_diversity;
pub mod rm_eval;
pub mod sampler;
pub mod schedule;
pub mod sft;
pub mod start_weights;
pub mod train_state;
pub mod zero;

pub use error::{Result, TrainError};
