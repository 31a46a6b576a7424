//! λ, the weight of the nominal reward in `tradeoff:λ` and `batch_worst_head:λ`.
//!
//! A [`Lambda`] is always in [0, 1]: [`Lambda::new`] is the one place in the project that
//! checks the range, and every way in — config files, REST bodies, request fields, command-line
//! flags, the `tradeoff:0.4` text form — goes through it, so code that holds a `Lambda` never
//! checks again.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Result, RobustError};

/// A finite λ ∈ [0, 1]. (De)serialises as a plain number; a value outside the range is a
/// deserialisation error naming λ.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f32", into = "f32")]
pub struct Lambda(f32);

impl Lambda {
    /// λ, or an error naming λ when it is not a finite number in [0, 1].
    pub fn new(value: f32) -> Result<Self> {
        // NaN and ±∞ fall outside the range too.
        if value.is_finite() && (0.0..=1.0).contains(&value) {
            // −0.0 + 0.0 is +0.0: one zero, so equal λs print alike ("0", never "-0").
            Ok(Self(value + 0.0))
        } else {
            Err(RobustError::BadParameter {
                name: "λ",
                expected: "in [0, 1]",
                value: value.to_string(),
            })
        }
    }

    pub fn get(self) -> f32 {
        self.0
    }
}

impl TryFrom<f32> for Lambda {
    type Error = RobustError;

    fn try_from(value: f32) -> Result<Self> {
        Self::new(value)
    }
}

impl From<Lambda> for f32 {
    fn from(l: Lambda) -> Self {
        l.0
    }
}

impl FromStr for Lambda {
    type Err = RobustError;

    fn from_str(s: &str) -> Result<Self> {
        let value = s
            .trim()
            .parse::<f32>()
            .map_err(|_| RobustError::BadParameter {
                name: "λ",
                expected: "a number",
                value: s.trim().into(),
            })?;
        Self::new(value)
    }
}

/// Exactly as the f32 prints, so `tradeoff:{λ}` reads back to the same λ.
impl fmt::Display for Lambda {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_finite_values_in_the_unit_interval_are_lambdas() {
        for ok in [0.0, 0.4, 1.0, -0.0] {
            assert!(Lambda::new(ok).is_ok(), "{ok}");
        }
        for bad in [-0.1, 1.01, f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert!(
                matches!(
                    Lambda::new(bad),
                    Err(RobustError::BadParameter { name: "λ", .. })
                ),
                "{bad}"
            );
        }
        assert_eq!(Lambda::new(-0.0).unwrap().to_string(), "0");
    }

    #[test]
    fn text_and_serde_forms_are_plain_numbers() {
        let l: Lambda = " 0.4 ".parse().unwrap();
        assert_eq!(l.get(), 0.4);
        assert_eq!(l.to_string(), "0.4");
        assert!("x".parse::<Lambda>().is_err());
        assert!("1.5".parse::<Lambda>().is_err());
        assert_eq!(serde_json::to_string(&l).unwrap(), "0.4");
        assert_eq!(serde_json::from_str::<Lambda>("1").unwrap().get(), 1.0);
        let err = serde_json::from_str::<Lambda>("1.5")
            .unwrap_err()
            .to_string();
        assert!(err.contains("λ must be in [0, 1]"), "{err}");
    }
}
