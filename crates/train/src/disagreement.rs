//! Does head disagreement flag the proxy's mistakes? The robust objective only helps when the
//! heads disagree where the nominal reward is wrong, so `rrlhf rm eval` measures exactly that
//! on labelled pairs: per pair, the spread over heads of the reward margin
//! (`std_h(μ_h(chosen) − μ_h(rejected))`), and how well it separates the pairs the nominal head
//! ranks wrong from those it ranks right (AUROC: 0.5 is no signal, 1 a perfect flag).

use rrlhf_robust::{HeadOutputs, Strategy, UncertaintySet, aggregate};
use serde::Serialize;

use crate::error::{Result, TrainError};

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Disagreement {
    /// Mean over pairs of the std over heads of the margin.
    pub mean: f64,
    /// The same over the pairs the nominal head ranks wrong (margin ≤ 0), and right.
    pub mean_when_wrong: f64,
    pub mean_when_right: f64,
    /// Share of pairs the nominal head ranks wrong.
    pub nominal_wrong: f64,
    /// P(disagreement on a wrong pair > on a right pair), ties ½; `None` when every pair is
    /// wrong or every pair right.
    pub auroc: Option<f64>,
}

/// Disagreement of K ≥ 2 heads on (chosen, rejected) outputs of the same pairs.
pub fn measure(chosen: &[HeadOutputs], rejected: &[HeadOutputs]) -> Result<Option<Disagreement>> {
    let Some(first) = chosen.first() else {
        return Ok(None);
    };
    if first.mu.len() < 2 || chosen.len() != rejected.len() {
        return Ok(None);
    }
    let nominal = |hs: &[HeadOutputs]| -> Result<Vec<f32>> {
        Ok(aggregate(hs, Strategy::Nominal, UncertaintySet::Mean, 0)
            .map_err(|e| TrainError::Invalid(e.to_string()))?
            .iter()
            .map(|a| a.reward)
            .collect())
    };
    let (nc, nr) = (nominal(chosen)?, nominal(rejected)?);
    let spread: Vec<f64> = chosen
        .iter()
        .zip(rejected)
        .map(|(c, r)| {
            let margins: Vec<f64> =
                c.mu.iter()
                    .zip(&r.mu)
                    .map(|(a, b)| (a - b) as f64)
                    .collect();
            std(&margins)
        })
        .collect();
    let wrong: Vec<bool> = nc.iter().zip(&nr).map(|(c, r)| c <= r).collect();
    let pick = |flag: bool| -> Vec<f64> {
        spread
            .iter()
            .zip(&wrong)
            .filter(|(_, w)| **w == flag)
            .map(|(s, _)| *s)
            .collect()
    };
    let (bad, good) = (pick(true), pick(false));
    Ok(Some(Disagreement {
        mean: mean(&spread),
        mean_when_wrong: mean(&bad),
        mean_when_right: mean(&good),
        nominal_wrong: bad.len() as f64 / spread.len() as f64,
        auroc: auroc(&bad, &good),
    }))
}

/// Mann–Whitney estimate of P(positive > negative), ties counting ½.
pub fn auroc(positives: &[f64], negatives: &[f64]) -> Option<f64> {
    if positives.is_empty() || negatives.is_empty() {
        return None;
    }
    let mut sorted = negatives.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mut score = 0.0;
    for &p in positives {
        let below = sorted.partition_point(|&n| n < p);
        let not_above = sorted.partition_point(|&n| n <= p);
        score += below as f64 + 0.5 * (not_above - below) as f64;
    }
    Some(score / (positives.len() * negatives.len()) as f64)
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.iter().sum::<f64>() / xs.len() as f64
}

fn std(xs: &[f64]) -> f64 {
    let m = mean(xs);
    (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len() as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads(mu: &[f32]) -> HeadOutputs {
        HeadOutputs {
            mu: mu.to_vec(),
            sigma: (0..mu.len()).map(|h| 0.1 + h as f32 * 0.01).collect(),
        }
    }

    #[test]
    fn auroc_counts_ordered_pairs_and_ties() {
        assert_eq!(auroc(&[3.0, 4.0], &[1.0, 2.0]), Some(1.0));
        assert_eq!(auroc(&[1.0], &[2.0]), Some(0.0));
        assert_eq!(auroc(&[2.0], &[2.0, 1.0]), Some(0.75));
        assert_eq!(auroc(&[], &[1.0]), None);
    }

    #[test]
    fn heads_that_split_on_the_wrong_pairs_flag_them() {
        // Pair 0: all heads agree chosen is better. Pair 1: the nominal head (0) ranks it wrong
        // and the others disagree with it.
        let chosen = [heads(&[1.0, 1.0, 1.0]), heads(&[0.0, 1.0, 2.0])];
        let rejected = [heads(&[0.0, 0.0, 0.0]), heads(&[0.5, 0.0, 0.0])];
        let d = measure(&chosen, &rejected).unwrap().unwrap();
        assert_eq!(d.nominal_wrong, 0.5);
        assert_eq!(d.auroc, Some(1.0));
        assert!(d.mean_when_wrong > d.mean_when_right);
        assert_eq!(d.mean_when_right, 0.0);
        // One head: nothing to disagree.
        assert_eq!(measure(&[heads(&[1.0])], &[heads(&[0.0])]).unwrap(), None);
    }
}
