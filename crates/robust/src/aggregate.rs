//! Applying a strategy to a batch: each sample's head rewards (μ, or one draw from the sampled
//! uncertainty set) become its summary and its one aggregated reward.

use serde::Serialize;

use crate::rng::Rng;
use crate::strategy::{Strategy, UncertaintySet};
use crate::summary::{HeadOutputs, SampleSummary, summarize_rewards};
use crate::{Result, RobustError};

/// A sample's summary and its aggregated reward.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Aggregated {
    #[serde(flatten)]
    pub summary: SampleSummary,
    pub reward: f32,
}

/// Aggregates every sample of a batch. `seed` drives `random` and the sampled uncertainty set.
pub fn aggregate(
    samples: &[HeadOutputs],
    strategy: Strategy,
    set: UncertaintySet,
    seed: u64,
) -> Result<Vec<Aggregated>> {
    let strategy = strategy.validate()?;
    let k = samples.first().map_or(0, HeadOutputs::heads);
    for (i, s) in samples.iter().enumerate() {
        s.validate(i)?;
        if s.heads() != k {
            return Err(RobustError::BadSample {
                index: i,
                message: format!("{} heads, sample 0 has {k}", s.heads()),
            });
        }
    }
    let mut rng = Rng::new(seed);
    let rewards: Vec<Vec<f32>> = samples
        .iter()
        .map(|s| match set {
            UncertaintySet::Mean => s.mu.clone(),
            UncertaintySet::Sampled => {
                s.mu.iter()
                    .zip(&s.sigma)
                    .map(|(m, sd)| m + rng.normal() as f32 * sd)
                    .collect()
            }
        })
        .collect();
    let summaries: Vec<SampleSummary> = samples
        .iter()
        .zip(&rewards)
        .map(|(s, r)| summarize_rewards(&s.sigma, r))
        .collect();
    // eq. (6): the head with the lowest expected return over this batch.
    let worst_head = (0..k)
        .map(|h| (h, rewards.iter().map(|r| r[h] as f64).sum::<f64>()))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(0, |(h, _)| h);
    Ok(summaries
        .into_iter()
        .zip(&rewards)
        .map(|(sum, r)| {
            let reward = match strategy {
                Strategy::Nominal => sum.nominal,
                Strategy::Min => sum.min,
                Strategy::Max => sum.max,
                Strategy::Mean => sum.mean,
                Strategy::Median => sum.median,
                Strategy::Tradeoff { lambda } => {
                    let l = lambda.get();
                    l * sum.nominal + (1.0 - l) * sum.min
                }
                Strategy::BatchWorstHead { lambda } => {
                    let l = lambda.get();
                    l * sum.nominal + (1.0 - l) * r[worst_head]
                }
                Strategy::Uwo { c } => sum.mean - c * sum.variance,
                Strategy::Random => rng.normal() as f32,
                Strategy::RandomMin => (0..k)
                    .map(|_| rng.normal() as f32)
                    .fold(f32::INFINITY, f32::min),
                Strategy::Constant => 0.0,
            };
            Aggregated {
                summary: sum,
                reward,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Lambda;
    use proptest::prelude::{prop, prop_assert, prop_assert_eq, proptest};
    use proptest::strategy::Strategy as _;

    fn sample() -> impl proptest::strategy::Strategy<Value = HeadOutputs> {
        (1usize..7).prop_flat_map(|k| {
            (
                prop::collection::vec(-10f32..10.0, k),
                prop::collection::vec(0.01f32..5.0, k),
            )
                .prop_map(|(mu, sigma)| HeadOutputs { mu, sigma })
        })
    }

    fn batch() -> impl proptest::strategy::Strategy<Value = Vec<HeadOutputs>> {
        (1usize..6, 1usize..9).prop_flat_map(|(k, n)| {
            prop::collection::vec(
                (
                    prop::collection::vec(-10f32..10.0, k),
                    prop::collection::vec(0.01f32..5.0, k),
                )
                    .prop_map(|(mu, sigma)| HeadOutputs { mu, sigma }),
                n,
            )
        })
    }

    proptest! {
        #[test]
        fn nominal_is_the_mu_of_the_smallest_sigma(s in sample()) {
            let a = aggregate(std::slice::from_ref(&s), Strategy::Nominal, UncertaintySet::Mean, 0).unwrap()[0];
            let min_sigma = s.sigma.iter().cloned().fold(f32::INFINITY, f32::min);
            prop_assert_eq!(s.sigma[a.summary.nominal_head], min_sigma);
            prop_assert_eq!(a.reward, s.mu[a.summary.nominal_head]);
            prop_assert!(s.sigma[..a.summary.nominal_head].iter().all(|&x| x > min_sigma), "lowest index on ties");
        }

        #[test]
        fn order_statistics_hold(s in sample(), lambda in 0f32..=1.0) {
            let one = std::slice::from_ref(&s);
            let get = |st| aggregate(one, st, UncertaintySet::Mean, 0).unwrap()[0].reward;
            let (min, max, mean, median, nominal) = (get(Strategy::Min), get(Strategy::Max), get(Strategy::Mean), get(Strategy::Median), get(Strategy::Nominal));
            prop_assert!(min <= median && median <= max && min <= mean + 1e-4 && mean <= max + 1e-4);
            let t = get(Strategy::Tradeoff { lambda: Lambda::new(lambda).unwrap() });
            prop_assert!(min - 1e-4 <= t && t <= nominal + 1e-4);
            let (t1, t0) = (get(Strategy::Tradeoff { lambda: Lambda::new(1.0).unwrap() }), get(Strategy::Tradeoff { lambda: Lambda::new(0.0).unwrap() }));
            let (u0, u1) = (get(Strategy::Uwo { c: 0.0 }), get(Strategy::Uwo { c: 1.0 }));
            prop_assert!((t1 - nominal).abs() < 1e-6 && (t0 - min).abs() < 1e-6);
            prop_assert!(u0 == mean && u1 <= mean);
            prop_assert_eq!(get(Strategy::Constant), 0.0);
        }

        #[test]
        fn per_sample_strategies_do_not_depend_on_the_batch(b in batch(), lambda in 0f32..=1.0) {
            for st in [Strategy::Nominal, Strategy::Min, Strategy::Max, Strategy::Mean, Strategy::Median, Strategy::Tradeoff { lambda: Lambda::new(lambda).unwrap() }, Strategy::Uwo { c: 0.5 }] {
                let all = aggregate(&b, st, UncertaintySet::Mean, 0).unwrap();
                for (i, s) in b.iter().enumerate() {
                    let alone = aggregate(std::slice::from_ref(s), st, UncertaintySet::Mean, 0).unwrap()[0];
                    prop_assert_eq!(all[i], alone);
                }
            }
        }

        #[test]
        fn batch_worst_head_uses_the_head_with_lowest_batch_mean(b in batch(), lambda in 0f32..=1.0) {
            let out = aggregate(&b, Strategy::BatchWorstHead { lambda: Lambda::new(lambda).unwrap() }, UncertaintySet::Mean, 0).unwrap();
            let k = b[0].heads();
            let means: Vec<f64> = (0..k).map(|h| b.iter().map(|s| s.mu[h] as f64).sum::<f64>()).collect();
            let worst = (0..k).min_by(|&x, &y| means[x].total_cmp(&means[y])).unwrap();
            for (s, a) in b.iter().zip(&out) {
                prop_assert!((a.reward - (lambda * a.summary.nominal + (1.0 - lambda) * s.mu[worst])).abs() < 1e-5);
            }
            // Its batch mean is never above that of the per-sample tradeoff's worst case… and
            // with λ = 1 it is the nominal reward.
            let nominal = aggregate(&b, Strategy::BatchWorstHead { lambda: Lambda::new(1.0).unwrap() }, UncertaintySet::Mean, 0).unwrap();
            prop_assert!(nominal.iter().all(|a| a.reward == a.summary.nominal));
        }
    }

    #[test]
    fn bad_samples_are_named() {
        let good = HeadOutputs {
            mu: vec![1.0, 2.0],
            sigma: vec![0.1, 0.2],
        };
        let ragged = HeadOutputs {
            mu: vec![1.0],
            sigma: vec![0.1],
        };
        let err = aggregate(
            &[good.clone(), ragged],
            Strategy::Min,
            UncertaintySet::Mean,
            0,
        )
        .unwrap_err();
        assert!(err.to_string().contains("sample 1"), "{err}");
        let nan = HeadOutputs {
            mu: vec![f32::NAN, 1.0],
            sigma: vec![0.1, 0.2],
        };
        assert!(aggregate(&[nan], Strategy::Min, UncertaintySet::Mean, 0).is_err());
        let neg = HeadOutputs {
            mu: vec![1.0, 1.0],
            sigma: vec![-0.1, 0.2],
        };
        assert!(aggregate(&[neg], Strategy::Min, UncertaintySet::Mean, 0).is_err());
        assert!(
            aggregate(&[], Strategy::Min, UncertaintySet::Mean, 0)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn sampled_set_and_random_are_seeded() {
        let b = vec![
            HeadOutputs {
                mu: vec![0.0, 1.0, 2.0],
                sigma: vec![1.0, 0.5, 0.1]
            };
            4
        ];
        let a1 = aggregate(&b, Strategy::Mean, UncertaintySet::Sampled, 3).unwrap();
        let a2 = aggregate(&b, Strategy::Mean, UncertaintySet::Sampled, 3).unwrap();
        let a3 = aggregate(&b, Strategy::Mean, UncertaintySet::Sampled, 4).unwrap();
        assert_eq!(a1, a2);
        assert_ne!(a1, a3);
        assert_ne!(a1[0].reward, a1[1].reward, "each sample draws its own ε");
        let r = aggregate(&b, Strategy::Random, UncertaintySet::Mean, 9).unwrap();
        assert_ne!(r[0].reward, r[1].reward);
        // The minimum of K = 3 standard normals: seeded, and lower than one draw on average.
        let wide = vec![b[0].clone(); 2000];
        let mean = |s| {
            let a = aggregate(&wide, s, UncertaintySet::Mean, 5).unwrap();
            a.iter().map(|x| x.reward as f64).sum::<f64>() / a.len() as f64
        };
        assert!(
            mean(Strategy::RandomMin) < mean(Strategy::Random) - 0.5,
            "E[min of 3] ≈ −0.85"
        );
        assert_eq!(
            aggregate(&b, Strategy::RandomMin, UncertaintySet::Mean, 9).unwrap(),
            aggregate(&b, Strategy::RandomMin, UncertaintySet::Mean, 9).unwrap()
        );
        // σ = 0 makes the sampled set equal to the means.
        let sharp = vec![HeadOutputs {
            mu: vec![0.5, 1.5],
            sigma: vec![0.0, 0.0],
        }];
        assert_eq!(
            aggregate(&sharp, Strategy::Mean, UncertaintySet::Sampled, 1).unwrap()[0].reward,
            1.0
        );
    }
}
