//! Aggregation strategies: how the K head rewards of a sample become the one reward PPO sees.
//!
//! The paper's objective (eq. 7) is `tradeoff:λ` = λ·nominal + (1 − λ)·min per sample; λ = 1 is
//! standard RLHF on the nominal head, λ = 0 the pure worst case. Eq. (6) literally takes the min
//! over heads of the *batch* expected return: `batch_worst_head:λ` picks the head whose batch mean
//! is lowest. `uwo:c` is uncertainty-weighted optimisation (mean − c·variance, Coste et al. 2023);
//! `random` (a standard normal per sample) and `constant` (0) are the paper's stochastic-case
//! controls, and `random_min` the robust objective in that case (every head N(0, 1), then the
//! minimum over the K heads: the "minimum random rewards" of Fig. 4b).
//!
//! A [`Strategy`] is valid once built: λ is a [`Lambda`], and c is checked by
//! [`Strategy::from_name`]. Configs and REST bodies hold the text form (`"tradeoff:0.4"`), which
//! (de)serialises straight into a `Strategy`; the reward service's request fields (a name plus
//! optional λ and c) go through [`Strategy::from_name`]. Both share one set of checks.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::lambda::Lambda;
use crate::{Result, RobustError};

// Where they lived before `aggregate` had its own module; users still import them from here.
pub use crate::aggregate::{Aggregated, aggregate};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Strategy {
    Nominal,
    Min,
    Max,
    Mean,
    Median,
    Tradeoff { lambda: Lambda },
    BatchWorstHead { lambda: Lambda },
    Uwo { c: f32 },
    Random,
    RandomMin,
    Constant,
}

/// A strategy without its parameter: what a request or config names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyName {
    Nominal,
    Min,
    Max,
    Mean,
    Median,
    Tradeoff,
    BatchWorstHead,
    Uwo,
    Random,
    RandomMin,
    Constant,
}

impl StrategyName {
    pub const ALL: [Self; 11] = [
        Self::Nominal,
        Self::Min,
        Self::Max,
        Self::Mean,
        Self::Median,
        Self::Tradeoff,
        Self::BatchWorstHead,
        Self::Uwo,
        Self::Random,
        Self::RandomMin,
        Self::Constant,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nominal => "nominal",
            Self::Min => "min",
            Self::Max => "max",
            Self::Mean => "mean",
            Self::Median => "median",
            Self::Tradeoff => "tradeoff",
            Self::BatchWorstHead => "batch_worst_head",
            Self::Uwo => "uwo",
            Self::Random => "random",
            Self::RandomMin => "random_min",
            Self::Constant => "constant",
        }
    }

    /// Whether the strategy is parameterised by λ (and needs one).
    pub fn takes_lambda(self) -> bool {
        matches!(self, Self::Tradeoff | Self::BatchWorstHead)
    }

    /// Whether the strategy is parameterised by c (and needs one).
    pub fn takes_c(self) -> bool {
        self == Self::Uwo
    }
}

impl FromStr for StrategyName {
    type Err = RobustError;

    /// A bare name, case-insensitive: `tradeoff`, `random_min`, …
    fn from_str(s: &str) -> Result<Self> {
        let text = s.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|n| n.as_str() == text)
            .ok_or_else(|| RobustError::UnknownStrategy(s.trim().into()))
    }
}

impl fmt::Display for StrategyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Strategy {
    /// The strategy `name` with its parameter: λ for `tradeoff` and `batch_worst_head`, c ≥ 0
    /// for `uwo`, nothing for the others. A missing parameter, or one the strategy does not
    /// take, is an error.
    pub fn from_name(name: StrategyName, lambda: Option<Lambda>, c: Option<f32>) -> Result<Self> {
        if lambda.is_some() && !name.takes_lambda() {
            return Err(no_lambda(name));
        }
        if c.is_some() && !name.takes_c() {
            return Err(RobustError::UnexpectedParameter {
                strategy: name,
                param: "c",
                takes_it: "uwo",
            });
        }
        let missing = |param, example| RobustError::MissingParameter {
            strategy: name,
            param,
            example,
        };
        let strategy = match name {
            StrategyName::Nominal => Self::Nominal,
            StrategyName::Min => Self::Min,
            StrategyName::Max => Self::Max,
            StrategyName::Mean => Self::Mean,
            StrategyName::Median => Self::Median,
            StrategyName::Random => Self::Random,
            StrategyName::RandomMin => Self::RandomMin,
            StrategyName::Constant => Self::Constant,
            StrategyName::Tradeoff => Self::Tradeoff {
                lambda: lambda.ok_or_else(|| missing("λ", "0.4"))?,
            },
            StrategyName::BatchWorstHead => Self::BatchWorstHead {
                lambda: lambda.ok_or_else(|| missing("λ", "0.4"))?,
            },
            StrategyName::Uwo => Self::Uwo {
                c: c.ok_or_else(|| missing("c", "0.5"))?,
            },
        };
        strategy.validate()
    }

    /// Checks c of `uwo` (finite, ≥ 0): the one parameter the type does not guarantee, since
    /// `Uwo { c }` can be written directly.
    pub fn validate(self) -> Result<Self> {
        match self {
            Self::Uwo { c } if !(c.is_finite() && c >= 0.0) => Err(RobustError::BadParameter {
                name: "c",
                expected: "finite and ≥ 0",
                value: c.to_string(),
            }),
            s => Ok(s),
        }
    }

    pub fn name(self) -> StrategyName {
        match self {
            Self::Nominal => StrategyName::Nominal,
            Self::Min => StrategyName::Min,
            Self::Max => StrategyName::Max,
            Self::Mean => StrategyName::Mean,
            Self::Median => StrategyName::Median,
            Self::Tradeoff { .. } => StrategyName::Tradeoff,
            Self::BatchWorstHead { .. } => StrategyName::BatchWorstHead,
            Self::Uwo { .. } => StrategyName::Uwo,
            Self::Random => StrategyName::Random,
            Self::RandomMin => StrategyName::RandomMin,
            Self::Constant => StrategyName::Constant,
        }
    }

    /// λ, for the strategies that have one.
    pub fn lambda(self) -> Option<Lambda> {
        match self {
            Self::Tradeoff { lambda } | Self::BatchWorstHead { lambda } => Some(lambda),
            _ => None,
        }
    }

    /// The same strategy with λ replaced; an error for a strategy without λ.
    pub fn with_lambda(self, lambda: Lambda) -> Result<Self> {
        match self {
            Self::Tradeoff { .. } => Ok(Self::Tradeoff { lambda }),
            Self::BatchWorstHead { .. } => Ok(Self::BatchWorstHead { lambda }),
            other => Err(no_lambda(other.name())),
        }
    }

    /// Whether a sample's reward depends on the other samples of its batch.
    pub fn is_batch_level(self) -> bool {
        matches!(self, Self::BatchWorstHead { .. })
    }
}

fn no_lambda(name: StrategyName) -> RobustError {
    RobustError::UnexpectedParameter {
        strategy: name,
        param: "λ",
        takes_it: "tradeoff or batch_worst_head",
    }
}

impl FromStr for Strategy {
    type Err = RobustError;

    /// `nominal`, `min`, `max`, `mean`, `median`, `random`, `random_min`, `constant`, `tradeoff:λ`,
    /// `batch_worst_head:λ`, `uwo:c` (also with `=` instead of `:`).
    fn from_str(s: &str) -> Result<Self> {
        let text = s.trim();
        let (name, param) = match text.split_once([':', '=']) {
            Some((n, p)) => (n, Some(p.trim())),
            None => (text, None),
        };
        let name: StrategyName = name
            .parse()
            .map_err(|_| RobustError::UnknownStrategy(text.into()))?;
        let (mut lambda, mut c) = (None, None);
        match param {
            None => {}
            Some(p) if name.takes_lambda() => lambda = Some(p.parse::<Lambda>()?),
            Some(p) if name.takes_c() => {
                c = Some(p.parse::<f32>().map_err(|_| RobustError::BadParameter {
                    name: "c",
                    expected: "a number",
                    value: p.into(),
                })?)
            }
            Some(_) => {
                return Err(RobustError::UnexpectedParameter {
                    strategy: name,
                    param: "parameter",
                    takes_it: "tradeoff, batch_worst_head or uwo",
                });
            }
        }
        Self::from_name(name, lambda, c)
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tradeoff { lambda } | Self::BatchWorstHead { lambda } => {
                write!(f, "{}:{lambda}", self.name())
            }
            Self::Uwo { c } => write!(f, "{}:{c}", self.name()),
            other => write!(f, "{}", other.name()),
        }
    }
}

/// The text form, `"tradeoff:0.4"`: what configs, metrics and the REST API hold.
impl Serialize for Strategy {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Strategy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// What the K head rewards of a sample are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UncertaintySet {
    /// Each head's μ (the default).
    #[default]
    Mean,
    /// One draw μ + ε·σ per head, ε ~ N(0, 1).
    Sampled,
}

impl FromStr for UncertaintySet {
    type Err = RobustError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mean" => Ok(Self::Mean),
            "sampled" => Ok(Self::Sampled),
            _ => Err(RobustError::UnknownUncertaintySet(s.trim().into())),
        }
    }
}

impl fmt::Display for UncertaintySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Mean => "mean",
            Self::Sampled => "sampled",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lambda(l: f32) -> Lambda {
        Lambda::new(l).unwrap()
    }

    #[test]
    fn parses_and_prints_every_strategy() {
        for text in [
            "nominal",
            "min",
            "max",
            "mean",
            "median",
            "random",
            "random_min",
            "constant",
            "tradeoff:0.4",
            "batch_worst_head:0.6",
            "uwo:0.5",
        ] {
            let s: Strategy = text.parse().unwrap();
            assert_eq!(s.to_string(), text);
            assert_eq!(s.name().as_str(), text.split(':').next().unwrap());
        }
        assert_eq!(
            "Tradeoff=0.4".parse::<Strategy>().unwrap(),
            Strategy::Tradeoff {
                lambda: lambda(0.4)
            }
        );
        assert!(matches!(
            "tradeoff:1.5".parse::<Strategy>(),
            Err(RobustError::BadParameter { name: "λ", .. })
        ));
        assert!(matches!(
            "tradeoff:nan".parse::<Strategy>(),
            Err(RobustError::BadParameter { name: "λ", .. })
        ));
        assert!(matches!(
            "tradeoff".parse::<Strategy>(),
            Err(RobustError::MissingParameter { param: "λ", .. })
        ));
        assert!(matches!(
            "uwo:-1".parse::<Strategy>(),
            Err(RobustError::BadParameter { name: "c", .. })
        ));
        assert!(matches!(
            "min:3".parse::<Strategy>(),
            Err(RobustError::UnexpectedParameter { .. })
        ));
        assert!(matches!(
            "best".parse::<Strategy>(),
            Err(RobustError::UnknownStrategy(_))
        ));
    }

    #[test]
    fn from_name_wants_exactly_the_parameter_of_the_strategy() {
        use StrategyName as N;
        assert_eq!(
            Strategy::from_name(N::Tradeoff, Some(lambda(0.3)), None).unwrap(),
            Strategy::Tradeoff {
                lambda: lambda(0.3)
            }
        );
        assert_eq!(
            Strategy::from_name(N::Uwo, None, Some(2.0)).unwrap(),
            Strategy::Uwo { c: 2.0 }
        );
        assert_eq!(
            Strategy::from_name(N::Min, None, None).unwrap(),
            Strategy::Min
        );
        let err = |r: Result<Strategy>| r.unwrap_err().to_string();
        assert_eq!(
            err(Strategy::from_name(N::BatchWorstHead, None, None)),
            "strategy `batch_worst_head` needs λ, as in `batch_worst_head:0.4`"
        );
        assert_eq!(
            err(Strategy::from_name(N::Min, Some(lambda(0.5)), None)),
            "strategy `min` has no λ (use tradeoff or batch_worst_head)"
        );
        assert!(
            err(Strategy::from_name(
                N::Tradeoff,
                Some(lambda(0.5)),
                Some(1.0)
            ))
            .contains("c")
        );
        assert!(err(Strategy::from_name(N::Uwo, None, Some(f32::NAN))).contains("c must be"));
        for name in StrategyName::ALL {
            assert_eq!(name.to_string().parse::<StrategyName>().unwrap(), name);
            let json = serde_json::to_string(&name).unwrap();
            assert_eq!(json, format!("\"{name}\""));
        }
    }

    #[test]
    fn with_lambda_replaces_lambda_only_where_there_is_one() {
        let t = Strategy::Tradeoff {
            lambda: lambda(0.4),
        };
        assert_eq!(
            t.with_lambda(lambda(0.8)).unwrap().to_string(),
            "tradeoff:0.8"
        );
        assert_eq!(t.lambda(), Some(lambda(0.4)));
        assert_eq!(
            Strategy::Uwo { c: 1.0 }
                .with_lambda(lambda(0.8))
                .unwrap_err()
                .to_string(),
            "strategy `uwo` has no λ (use tradeoff or batch_worst_head)"
        );
    }

    #[test]
    fn serde_uses_the_text_forms() {
        let s: Strategy = serde_json::from_str("\"batch_worst_head:0.6\"").unwrap();
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            "\"batch_worst_head:0.6\""
        );
        let err = serde_json::from_str::<Strategy>("\"tradeoff:2\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("λ must be in [0, 1]"), "{err}");
        assert!(serde_json::from_str::<Strategy>("0.4").is_err());
        let set: UncertaintySet = serde_json::from_str("\"sampled\"").unwrap();
        assert_eq!(set, UncertaintySet::Sampled);
        assert_eq!(serde_json::to_string(&set).unwrap(), "\"sampled\"");
        assert!(serde_json::from_str::<UncertaintySet>("\"worst\"").is_err());
        assert_eq!(
            " Mean ".parse::<UncertaintySet>().unwrap(),
            UncertaintySet::Mean
        );
        assert!(matches!(
            "worst".parse::<UncertaintySet>(),
            Err(RobustError::UnknownUncertaintySet(_))
        ));
    }
}
