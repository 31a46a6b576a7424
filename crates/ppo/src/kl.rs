//! Per-token KL of the policy π against the reference π₀, estimated from the sampled tokens'
//! log-probabilities (Schulman's estimators): k1 = log π − log π₀ is unbiased but can be
//! negative per token; k3 = (r − 1) − log r with r = π₀/π is unbiased and never negative.

use serde::{Deserialize, Serialize};

use crate::{Result, same_len};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KlEstimator {
    #[default]
    K1,
    K3,
}

impl std::str::FromStr for KlEstimator {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "k1" => Ok(Self::K1),
            "k3" => Ok(Self::K3),
            other => Err(format!(
                "unknown KL estimator `{other}` (expected k1 or k3)"
            )),
        }
    }
}

/// KL estimate per response token.
pub fn per_token_kl(logp: &[f32], ref_logp: &[f32], estimator: KlEstimator) -> Result<Vec<f32>> {
    same_len("reference logprobs", logp.len(), ref_logp.len())?;
    Ok(logp
        .iter()
        .zip(ref_logp)
        .map(|(&lp, &rp)| {
            let log_ratio = lp - rp;
            match estimator {
                KlEstimator::K1 => log_ratio,
                // r = π₀/π = exp(−log_ratio); computed in f64 to keep small ratios exact.
                KlEstimator::K3 => {
                    let lr = -(log_ratio as f64);
                    (lr.exp() - 1.0 - lr) as f32
                }
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn identical_policies_have_zero_kl() {
        let lp = [-1.0, -2.5, -0.1];
        for e in [KlEstimator::K1, KlEstimator::K3] {
            assert_eq!(per_token_kl(&lp, &lp, e).unwrap(), vec![0.0; 3]);
        }
    }

    #[test]
    fn length_mismatch_is_named() {
        let err = per_token_kl(&[0.0], &[0.0, 1.0], KlEstimator::K1).unwrap_err();
        assert!(err.to_string().contains("reference logprobs"));
    }

    proptest! {
        #[test]
        fn k3_is_never_negative_and_k1_is_the_log_ratio(
            pairs in prop::collection::vec((-8.0f32..0.0, -8.0f32..0.0), 1..32)
        ) {
            let (lp, rp): (Vec<f32>, Vec<f32>) = pairs.into_iter().unzip();
            let k3 = per_token_kl(&lp, &rp, KlEstimator::K3).unwrap();
            prop_assert!(k3.iter().all(|&k| k >= 0.0));
            let k1 = per_token_kl(&lp, &rp, KlEstimator::K1).unwrap();
            for i in 0..lp.len() {
                prop_assert_eq!(k1[i], lp[i] - rp[i]);
            }
        }
    }
}
