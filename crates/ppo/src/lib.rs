//! `rrlhf-ppo`: the PPO arithmetic the orchestrator applies between scoring and training, on
//! plain `f32` slices (no tensor library: the orchestrator never links libtorch).
//!
//! - [`kl`]: per-token KL estimates of the policy against the frozen reference (k1, k3).
//! - [`controller`]: the fixed and the adaptive (Ziegler et al. 2019) KL coefficient β.
//! - [`rewards`]: token rewards `−β·KL_t` with the sequence reward added at the last response
//!   token, optional clipping and running normalisation of the sequence reward.
//! - [`gae`]: generalised advantage estimation, returns, and advantage whitening.

pub mod controller;
pub mod gae;
pub mod kl;
pub mod rewards;

pub use controller::KlController;
pub use gae::{Gae, gae, whiten};
pub use kl::{KlEstimator, per_token_kl};
pub use rewards::{RewardNorm, token_rewards};

/// A shape or parameter error, named.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PpoError {
    #[error("{name}: expected length {expected}, got {actual}")]
    Length {
        name: &'static str,
        expected: usize,
        actual: usize,
    },
    #[error("{name} must be {expected}, got {value}")]
    BadParameter {
        name: &'static str,
        expected: &'static str,
        value: f64,
    },
}

pub type Result<T, E = PpoError> = std::result::Result<T, E>;

pub(crate) fn same_len(name: &'static str, expected: usize, actual: usize) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(PpoError::Length {
            name,
            expected,
            actual,
        })
    }
}

pub(crate) fn in_range(
    name: &'static str,
    value: f64,
    lo: f64,
    hi: f64,
    expected: &'static str,
) -> Result<()> {
    if value.is_finite() && (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(PpoError::BadParameter {
            name,
            expected,
            value,
        })
    }
}
