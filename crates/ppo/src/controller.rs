//! The KL coefficient β. Fixed, or adaptive as in Ziegler et al. (2019): after each batch, β is
//! multiplied by `1 + clip(KL/target − 1, ±0.2) · n/horizon`, so it grows while the policy drifts
//! faster than the target and shrinks when it stays closer. The whole state is serialisable: a
//! resumed run continues with the β it had.

use serde::{Deserialize, Serialize};

use crate::{Result, in_range};

/// The largest β accepted (from a config, a control request, or reached by the adaptive
/// controller). Practical values are 0.01–0.2 (InstructGPT: 0.02); at 10 the KL term already
/// outweighs any reward in [−10, 10] by far, and much larger finite values overflow the
/// returns to ±∞ and NaN, which would fail the step.
pub const MAX_BETA: f64 = 10.0;

/// Checks a β from outside (config or control request).
pub fn check_beta(name: &'static str, beta: f64) -> Result<()> {
    in_range(name, beta, 0.0, MAX_BETA, "in [0, 10]")
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum KlController {
    Fixed {
        beta: f64,
    },
    Adaptive {
        beta: f64,
        /// Per-sequence KL the controller steers towards.
        target: f64,
        /// Samples over which a full proportional correction is applied.
        horizon: f64,
    },
}

impl KlController {
    pub fn validate(&self) -> Result<()> {
        match *self {
            Self::Fixed { beta } => check_beta("kl.beta", beta),
            Self::Adaptive {
                beta,
                target,
                horizon,
            } => {
                check_beta("kl.beta", beta)?;
                in_range("kl.target", target, f64::MIN_POSITIVE, f64::MAX, "> 0")?;
                in_range("kl.horizon", horizon, 1.0, f64::MAX, "≥ 1")
            }
        }
    }

    pub fn beta(&self) -> f64 {
        match *self {
            Self::Fixed { beta } | Self::Adaptive { beta, .. } => beta,
        }
    }

    /// Replaces β (a live change from the control API); the controller kind stays.
    pub fn set_beta(&mut self, value: f64) {
        match self {
            Self::Fixed { beta } | Self::Adaptive { beta, .. } => *beta = value,
        }
    }

    /// Feeds the mean per-sequence KL of a batch of `n` samples.
    pub fn update(&mut self, current_kl: f64, n: usize) {
        if let Self::Adaptive {
            beta,
            target,
            horizon,
        } = self
            && current_kl.is_finite()
        {
            let error = (current_kl / *target - 1.0).clamp(-0.2, 0.2);
            // A horizon shorter than five batches would otherwise flip β's sign; halving is
            // the most one batch may do.
            *beta = (*beta * (1.0 + error * n as f64 / *horizon).max(0.5)).min(MAX_BETA);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fixed_never_moves() {
        let mut c = KlController::Fixed { beta: 0.05 };
        c.update(100.0, 128);
        assert_eq!(c.beta(), 0.05);
    }

    #[test]
    fn adaptive_moves_towards_the_target() {
        let mk = || KlController::Adaptive {
            beta: 0.1,
            target: 6.0,
            horizon: 10_000.0,
        };
        let (mut above, mut below, mut at) = (mk(), mk(), mk());
        above.update(12.0, 128);
        below.update(1.0, 128);
        at.update(6.0, 128);
        assert!(above.beta() > 0.1 && below.beta() < 0.1);
        assert_eq!(at.beta(), 0.1);
        // The proportional error is clipped at ±0.2.
        assert!((above.beta() - 0.1 * (1.0 + 0.2 * 128.0 / 10_000.0)).abs() < 1e-12);
    }

    #[test]
    fn bad_parameters_are_named() {
        let err = KlController::Adaptive {
            beta: 0.1,
            target: 0.0,
            horizon: 100.0,
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("kl.target"), "{err}");
    }

    proptest! {
        #[test]
        fn adaptive_beta_stays_positive(kls in prop::collection::vec(0.0f64..100.0, 1..50)) {
            let mut c = KlController::Adaptive { beta: 0.2, target: 3.0, horizon: 256.0 };
            for kl in kls {
                c.update(kl, 128);
                prop_assert!(c.beta() > 0.0);
            }
        }
    }
}
