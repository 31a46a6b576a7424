//! A noisy annotator: labels a pair by a Bradley–Terry draw on the gold rewards,
//! `P(first preferred) = σ((g₁ − g₂)/τ)`, with τ chosen so that the expected agreement with
//! gold's own ordering over the pairs to label is the target (the paper's appendix A measured
//! ~70% between annotators and experts). Pairs gold cannot tell apart (equal rewards) are
//! dropped: they carry no preference to agree with.

use rrlhf_robust::rng::Rng;

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Expected agreement with gold at temperature τ over pairs with gold differences `diffs`.
pub fn expected_agreement(diffs: &[f64], tau: f64) -> f64 {
    diffs.iter().map(|d| sigmoid(d.abs() / tau)).sum::<f64>() / diffs.len().max(1) as f64
}

/// The τ whose expected agreement is `target` (bisection on log τ; agreement falls as τ grows).
pub fn calibrate(diffs: &[f64], target: f64) -> anyhow::Result<f64> {
    anyhow::ensure!(
        (0.5..1.0).contains(&target),
        "agreement: target {target} must be in [0.5, 1)"
    );
    anyhow::ensure!(
        !diffs.is_empty(),
        "annotator: no pair has distinct gold rewards"
    );
    let (mut lo, mut hi) = (1e-6f64.ln(), 1e6f64.ln());
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if expected_agreement(diffs, mid.exp()) > target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok((0.5 * (lo + hi)).exp())
}

/// A pair as labelled: `first_preferred` says which response the annotator chose.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Label {
    pub first_preferred: bool,
    /// Whether the choice agrees with gold's ordering.
    pub agrees: bool,
}

/// Labels `(g₁, g₂)` pairs with noise at the τ giving `target` agreement; pairs with equal gold
/// are `None`. Returns the labels, τ, and the realised agreement.
pub fn label(
    gold_pairs: &[(f32, f32)],
    target: f64,
    seed: u64,
) -> anyhow::Result<(Vec<Option<Label>>, f64, f64)> {
    let diffs: Vec<f64> = gold_pairs
        .iter()
        .map(|(a, b)| (*a - *b) as f64)
        .filter(|d| *d != 0.0)
        .collect();
    let tau = calibrate(&diffs, target)?;
    let mut rng = Rng::new(seed);
    let labels: Vec<Option<Label>> = gold_pairs
        .iter()
        .map(|(a, b)| {
            let d = (*a - *b) as f64;
            (d != 0.0).then(|| {
                let first_preferred = rng.uniform() < sigmoid(d / tau);
                Label {
                    first_preferred,
                    agrees: first_preferred == (d > 0.0),
                }
            })
        })
        .collect();
    let used: Vec<&Label> = labels.iter().flatten().collect();
    let realised = used.iter().filter(|l| l.agrees).count() as f64 / used.len().max(1) as f64;
    Ok((labels, tau, realised))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn calibration_hits_the_target(diffs in prop::collection::vec(0.01f64..5.0, 5..60), target in 0.55f64..0.95) {
            let tau = calibrate(&diffs, target).unwrap();
            prop_assert!((expected_agreement(&diffs, tau) - target).abs() < 1e-6);
        }
    }

    #[test]
    fn realised_agreement_is_near_the_target() {
        let pairs: Vec<(f32, f32)> = (0..4000)
            .map(|i| ((i % 7) as f32 * 0.3, (i % 5) as f32 * 0.4))
            .collect();
        let (labels, _, realised) = label(&pairs, 0.7, 1).unwrap();
        assert!((realised - 0.7).abs() < 0.03, "{realised}");
        assert_eq!(labels.len(), pairs.len());
        assert!(
            labels
                .iter()
                .zip(&pairs)
                .all(|(l, (a, b))| l.is_none() == (a == b))
        );
    }
}
