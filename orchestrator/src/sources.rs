//! Heterologous reward fusion in PPO (paper, appendix F): besides `endpoints.reward`, a run can
//! score every sample with further reward services (`[[endpoints.extra_rewards]]`), e.g. a
//! harmlessness BRME and a helpfulness RM. Each source's heads are z-normalised with that
//! source's calibration (mean and std of its nominal reward on a reference set, as recorded by
//! `rrlhf rm calibrate` and reported by its service's `Info`, or given in the config), and the
//! normalised heads of all sources form one uncertainty set per sample, which the run's
//! strategy then aggregates like the heads of one ensemble ([`rrlhf_robust::fusion`]).
//!
//! σ is divided by the source's std like μ (see [`rrlhf_robust::fusion`]): `nominal` picks the
//! head that is most confident relative to its own source's spread. A Bradley–Terry source
//! reports σ = 0, so it is the nominal head of every sample it is fused into.
//!
//! With one source nothing changes: no calibration is needed or applied, and the numbers are
//! those of a run without this module.

use rrlhf_proto::common::v1::Calibration as ReportedCalibration;
use rrlhf_proto::reward::v1::InfoRequest;
use rrlhf_robust::HeadOutputs;
use rrlhf_robust::fusion::{Calibration, fuse_heads};
use serde::{Deserialize, Serialize};

use crate::clients::{Services, retry, with_deadline};
use crate::config::{Endpoints, RetrySettings};
use crate::error::{OrchestratorError, Result};
use crate::experience::Rollout;
use crate::step::RewardStats;

/// The name of the `endpoints.reward` source when `endpoints.reward_name` is not set.
pub const PRIMARY_NAME: &str = "reward";

/// One more reward source (`[[endpoints.extra_rewards]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardSource {
    /// How metrics and errors name the source: letters, digits, `-`, `_`, `.`; unique.
    pub name: String,
    /// Its reward service's replicas (used round-robin, like `endpoints.reward`).
    pub urls: Vec<String>,
    /// Overrides the calibration its service reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationSetting>,
}

/// A calibration written in the config: `{ mean = …, std = … }`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationSetting {
    pub mean: f32,
    pub std: f32,
}

impl CalibrationSetting {
    fn check(&self, field: &str) -> Result<()> {
        if !(self.mean.is_finite() && self.std.is_finite() && self.std > 1e-8) {
            return Err(OrchestratorError::invalid(
                field,
                format!(
                    "needs a finite mean and a std > 0, got mean {} std {}",
                    self.mean, self.std
                ),
            ));
        }
        Ok(())
    }
}

/// One source as the config names it: `(field prefix, name, urls, calibration override)`.
pub struct Named<'a> {
    pub field: String,
    pub name: &'a str,
    pub urls: &'a [String],
    pub calibration: Option<CalibrationSetting>,
}

/// Every reward source of `e`, `endpoints.reward` first.
pub fn named(e: &Endpoints) -> Vec<Named<'_>> {
    let primary = Named {
        field: "endpoints.reward".into(),
        name: e.reward_name.as_deref().unwrap_or(PRIMARY_NAME),
        urls: &e.reward,
        calibration: e.reward_calibration,
    };
    std::iter::once(primary)
        .chain(e.extra_rewards.iter().enumerate().map(|(i, s)| Named {
            field: format!("endpoints.extra_rewards[{i}]"),
            name: &s.name,
            urls: &s.urls,
            calibration: s.calibration,
        }))
        .collect()
}

/// Checks names and calibration overrides of the sources (their URLs are checked with the
/// other endpoints').
pub fn validate(e: &Endpoints) -> Result<()> {
    let sources = named(e);
    for (i, s) in sources.iter().enumerate() {
        let name_field = if i == 0 {
            "endpoints.reward_name".to_string()
        } else {
            format!("{}.name", s.field)
        };
        if s.name.is_empty()
            || !s
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(OrchestratorError::invalid(
                name_field,
                format!(
                    "`{}`: only letters, digits, `-`, `_` and `.`, not empty",
                    s.name
                ),
            ));
        }
        if sources[..i].iter().any(|o| o.name == s.name) {
            return Err(OrchestratorError::invalid(
                name_field,
                format!("`{}` names two reward sources", s.name),
            ));
        }
        if let Some(c) = &s.calibration {
            let field = if i == 0 {
                "endpoints.reward_calibration".to_string()
            } else {
                format!("{}.calibration", s.field)
            };
            c.check(&field)?;
        }
    }
    Ok(())
}

/// A source's calibration: the config's override, else what its service reports; an error
/// naming the source (and how to give it one) when there is neither, or the one there is
/// cannot normalise (std ≤ 0).
pub fn pick_calibration(
    source: &Named<'_>,
    reported: Option<ReportedCalibration>,
) -> Result<Calibration> {
    let field = if source.field == "endpoints.reward" {
        "endpoints.reward_calibration".to_string()
    } else {
        format!("{}.calibration", source.field)
    };
    if let Some(c) = source.calibration {
        c.check(&field)?;
        return Ok(Calibration {
            mean: c.mean,
            std: c.std,
            count: 0,
        });
    }
    let Some(r) = reported else {
        return Err(OrchestratorError::invalid(
            field.clone(),
            format!(
                "reward source `{}` has no calibration, which fusing several reward sources needs: \
                 its service ({}) reports none (run `rrlhf rm calibrate` on its model) and the \
                 config sets none ({field} = {{ mean = …, std = … }})",
                source.name,
                source.urls.first().map_or("no URL", String::as_str),
            ),
        ));
    };
    let setting = CalibrationSetting {
        mean: r.mean,
        std: r.std,
    };
    setting.check(&field).map_err(|_| {
        OrchestratorError::invalid(
            field.clone(),
            format!(
                "reward source `{}` reports a calibration that cannot normalise (mean {}, std {}); \
                 override it with {field} = {{ mean = …, std = … }}",
                source.name, r.mean, r.std
            ),
        )
    })?;
    Ok(Calibration {
        mean: r.mean,
        std: r.std,
        count: r.count as usize,
    })
}

/// The sources of a fusing run, in the order of their heads in the fused set.
#[derive(Debug, Clone, PartialEq)]
pub struct Fusion {
    pub sources: Vec<(String, Calibration)>,
}

impl Fusion {
    /// The run's sources with their calibrations, asking the services that have no override
    /// (rank 0's `Info`); `None` with one source (nothing to fuse).
    pub async fn resolve(
        e: &Endpoints,
        services: &Services,
        retry_cfg: &RetrySettings,
    ) -> Result<Option<Self>> {
        if e.extra_rewards.is_empty() {
            return Ok(None);
        }
        let mut sources = Vec::new();
        for (i, s) in named(e).iter().enumerate() {
            let reported = if s.calibration.is_some() {
                None
            } else {
                let pool = if i == 0 {
                    &services.reward
                } else {
                    &services.extra_rewards[i - 1].pool
                };
                let what = format!("reward source `{}` Info", s.name);
                retry(retry_cfg, &what, || {
                    let mut c = pool.rank(0);
                    let req = with_deadline(InfoRequest {}, retry_cfg.deadlines.info_secs);
                    async move { c.info(req).await }
                })
                .await?
                .into_inner()
                .calibration
            };
            sources.push((s.name.to_string(), pick_calibration(s, reported)?));
        }
        Ok(Some(Self { sources }))
    }

    /// Replaces each rollout's heads with the fused set of its sources' heads.
    pub fn apply(&self, rollouts: &mut [Rollout]) -> Result<()> {
        for (i, r) in rollouts.iter_mut().enumerate() {
            if r.source_heads.len() != self.sources.len() {
                return Err(OrchestratorError::bad_response(
                    "reward sources",
                    format!(
                        "sample {i}: scored by {} of {} sources",
                        r.source_heads.len(),
                        self.sources.len()
                    ),
                ));
            }
            let parts: Vec<(Calibration, &HeadOutputs)> = self
                .sources
                .iter()
                .map(|(_, c)| *c)
                .zip(&r.source_heads)
                .collect();
            let fused = fuse_heads(&parts);
            r.heads_mu = fused.mu;
            r.heads_sigma = fused.sigma;
        }
        Ok(())
    }

    /// Per-source statistics of a fused batch; `fused` are the statistics of the fused set
    /// (its per-head nominal frequencies are split among the sources by head ranges).
    pub fn stats(&self, rollouts: &[Rollout], fused: &RewardStats) -> Vec<SourceStats> {
        let mut first_head = 0;
        self.sources
            .iter()
            .enumerate()
            .map(|(s, (name, cal))| {
                let heads = rollouts.first().map_or(0, |r| r.source_heads[s].heads());
                let summaries: Vec<_> = rollouts
                    .iter()
                    .map(|r| rrlhf_robust::summarize(&r.source_heads[s]))
                    .collect();
                let nominal = mean(summaries.iter().map(|m| m.nominal));
                let range = first_head..(first_head + heads).min(fused.head_means.len());
                first_head += heads;
                SourceStats {
                    name: name.clone(),
                    heads,
                    calibration: *cal,
                    mean_nominal: nominal,
                    mean_nominal_normalized: cal.normalize(nominal),
                    mean_min: mean(summaries.iter().map(|m| m.min)),
                    mean_mean: mean(summaries.iter().map(|m| m.mean)),
                    head_means: (0..heads)
                        .map(|h| mean(rollouts.iter().map(|r| r.source_heads[s].mu[h])))
                        .collect(),
                    nominal_share: fused
                        .nominal_head_frequency
                        .get(range)
                        .map_or(0.0, |f| f.iter().sum()),
                }
            })
            .collect()
    }
}

/// What one reward source said about a step's batch, in its own units unless named
/// `normalized`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceStats {
    pub name: String,
    /// Its heads K (its slice of the fused set, in source order).
    pub heads: usize,
    /// The calibration its rewards were normalised with.
    pub calibration: Calibration,
    /// Mean over samples of the source's own nominal reward (its smallest-σ head's μ).
    pub mean_nominal: f32,
    /// `mean_nominal` z-normalised with the calibration.
    pub mean_nominal_normalized: f32,
    /// Mean over samples of the source's lowest head.
    pub mean_min: f32,
    /// Mean over samples of the mean over the source's heads.
    pub mean_mean: f32,
    /// Mean μ of each of its heads (raw).
    pub head_means: Vec<f32>,
    /// Fraction of samples whose fused nominal head is one of this source's.
    pub nominal_share: f32,
}

fn mean(xs: impl Iterator<Item = f32>) -> f32 {
    let (sum, n) = xs.fold((0.0f64, 0usize), |(s, n), x| (s + x as f64, n + 1));
    if n == 0 { 0.0 } else { (sum / n as f64) as f32 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OrchestratorConfig;

    fn two_sources() -> OrchestratorConfig {
        let mut cfg = OrchestratorConfig::default();
        cfg.endpoints.extra_rewards.push(RewardSource {
            name: "helpful".into(),
            urls: vec!["http://127.0.0.1:50062".into()],
            calibration: None,
        });
        cfg
    }

    #[test]
    fn a_source_without_calibration_is_an_error_naming_it() {
        let cfg = two_sources();
        cfg.validate().unwrap();
        let sources = named(&cfg.endpoints);
        assert_eq!(
            sources.iter().map(|s| s.name).collect::<Vec<_>>(),
            ["reward", "helpful"]
        );
        let err = pick_calibration(&sources[1], None).unwrap_err().to_string();
        assert!(
            err.starts_with("endpoints.extra_rewards[0].calibration")
                && err.contains("`helpful` has no calibration")
                && err.contains("http://127.0.0.1:50062")
                && err.contains("rrlhf rm calibrate"),
            "{err}"
        );
        let err = pick_calibration(&sources[0], None).unwrap_err().to_string();
        assert!(
            err.starts_with("endpoints.reward_calibration") && err.contains("`reward`"),
            "{err}"
        );
        // A degenerate reported calibration cannot normalise.
        let flat = ReportedCalibration {
            mean: 1.0,
            std: 0.0,
            count: 4,
            reference: String::new(),
        };
        let err = pick_calibration(&sources[1], Some(flat.clone()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`helpful`") && err.contains("std 0"), "{err}");
        // What the service reports is used; the config's override wins over it.
        let good = ReportedCalibration { std: 2.0, ..flat };
        assert_eq!(
            pick_calibration(&sources[1], Some(good.clone())).unwrap(),
            Calibration {
                mean: 1.0,
                std: 2.0,
                count: 4
            }
        );
        let mut cfg = cfg;
        cfg.endpoints.extra_rewards[0].calibration = Some(CalibrationSetting {
            mean: 0.5,
            std: 0.25,
        });
        let sources = named(&cfg.endpoints);
        assert_eq!(pick_calibration(&sources[1], Some(good)).unwrap().std, 0.25);
    }

    #[test]
    fn source_names_and_overrides_are_checked_in_the_config() {
        type Edit = fn(&mut OrchestratorConfig);
        let cases: [(&str, Edit); 5] = [
            ("endpoints.extra_rewards[0].name", |c| {
                c.endpoints.extra_rewards[0].name = "reward".into()
            }),
            ("endpoints.extra_rewards[0].name", |c| {
                c.endpoints.extra_rewards[0].name = "a b".into()
            }),
            ("endpoints.extra_rewards[0].calibration", |c| {
                c.endpoints.extra_rewards[0].calibration = Some(CalibrationSetting {
                    mean: 0.0,
                    std: 0.0,
                })
            }),
            ("endpoints.reward_calibration", |c| {
                c.endpoints.reward_calibration = Some(CalibrationSetting {
                    mean: f32::NAN,
                    std: 1.0,
                })
            }),
            ("endpoints.extra_rewards[0]", |c| {
                c.endpoints.extra_rewards[0].urls = vec!["nowhere".into()]
            }),
        ];
        for (field, edit) in cases {
            let mut cfg = two_sources();
            edit(&mut cfg);
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.starts_with(field), "{field}: {err}");
        }
        let mut cfg = two_sources();
        cfg.endpoints.extra_rewards[0].urls.clear();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("at least one endpoint"), "{err}");
    }

    #[test]
    fn extra_sources_are_read_from_toml_and_one_source_writes_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.toml");
        std::fs::write(
            &path,
            "[endpoints]\nreward_name = \"harmless\"\n\
             reward_calibration = { mean = 0.1, std = 0.5 }\n\
             [[endpoints.extra_rewards]]\nname = \"helpful\"\nurls = [\"http://h:1\"]\n\
             [[endpoints.extra_rewards]]\nname = \"honest\"\nurls = [\"http://h:2\"]\n\
             calibration = { mean = -1.0, std = 2.0 }\n",
        )
        .unwrap();
        let cfg: OrchestratorConfig =
            rrlhf_runtime::load_config(Some(&path), &serde_json::json!({})).unwrap();
        cfg.validate().unwrap();
        let names: Vec<&str> = named(&cfg.endpoints).iter().map(|s| s.name).collect();
        assert_eq!(names, ["harmless", "helpful", "honest"]);
        assert_eq!(
            cfg.endpoints.extra_rewards[1].calibration,
            Some(CalibrationSetting {
                mean: -1.0,
                std: 2.0
            })
        );
        // A typo in a source is an error, not silently ignored.
        std::fs::write(
            &path,
            "[[endpoints.extra_rewards]]\nname = \"h\"\nurl = [\"http://h:1\"]\n",
        )
        .unwrap();
        let r: std::result::Result<OrchestratorConfig, _> =
            rrlhf_runtime::load_config(Some(&path), &serde_json::json!({}));
        assert!(r.unwrap_err().to_string().contains("url"));
        // Without extra sources the endpoints serialise exactly as before.
        let json = serde_json::to_value(OrchestratorConfig::default().endpoints).unwrap();
        let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        assert!(
            !keys
                .iter()
                .any(|k| k.contains("extra") || k.starts_with("reward_")),
            "{keys:?}"
        );
    }

    #[test]
    fn fused_sets_concatenate_normalised_sources_and_stats_split_by_source() {
        let fusion = Fusion {
            sources: vec![
                (
                    "a".into(),
                    Calibration {
                        mean: 1.0,
                        std: 2.0,
                        count: 0,
                    },
                ),
                (
                    "b".into(),
                    Calibration {
                        mean: 0.0,
                        std: 0.5,
                        count: 0,
                    },
                ),
            ],
        };
        let heads = |mu: Vec<f32>, sigma: Vec<f32>| HeadOutputs { mu, sigma };
        let mut rollouts = vec![Rollout {
            source_heads: vec![
                heads(vec![3.0, -1.0], vec![0.2, 0.4]),
                heads(vec![0.5], vec![0.05]),
            ],
            ..Rollout::default()
        }];
        fusion.apply(&mut rollouts).unwrap();
        assert_eq!(rollouts[0].heads_mu, vec![1.0, -1.0, 1.0]);
        assert_eq!(rollouts[0].heads_sigma, vec![0.1, 0.2, 0.1]);
        let fused = RewardStats {
            nominal_head_frequency: vec![1.0, 0.0, 0.0],
            head_means: vec![1.0, -1.0, 1.0],
            ..RewardStats::default()
        };
        let stats = fusion.stats(&rollouts, &fused);
        assert_eq!(stats[0].mean_nominal, 3.0);
        assert_eq!(stats[0].mean_nominal_normalized, 1.0);
        assert_eq!(stats[0].mean_min, -1.0);
        assert_eq!(stats[0].head_means, vec![3.0, -1.0]);
        assert_eq!((stats[0].nominal_share, stats[1].nominal_share), (1.0, 0.0));
        assert_eq!((stats[1].heads, stats[1].mean_nominal), (1, 0.5));
        // A sample one source did not score is refused, not fused short.
        let mut short = rollouts.clone();
        short[0].source_heads.pop();
        assert!(fusion.apply(&mut short).is_err());
    }
}
