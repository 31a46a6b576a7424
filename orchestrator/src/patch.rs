//! Live changes to a run's settings — λ, the strategy, β — sent as a REST `PATCH` and applied
//! from the next step, whole or not at all.

use serde::{Deserialize, Serialize};

use rrlhf_robust::{Lambda, Strategy};

use crate::checkpoint::RunState;
use crate::error::{OrchestratorError, Result};

/// Live changes to a running run; every field is optional. λ and the strategy are checked as
/// the body is read: a bad one never reaches the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Patch {
    /// λ of a `tradeoff` or `batch_worst_head` strategy.
    pub lambda: Option<Lambda>,
    /// The text form, e.g. `"min"` or `"tradeoff:0.6"`.
    pub strategy: Option<Strategy>,
    /// The KL coefficient β (the controller kind stays).
    pub beta: Option<f64>,
}

/// Applies a live change to the run's settings; the error names the field. λ and the strategy
/// are valid already; what is left is whether they fit together, and β.
pub fn apply_patch(state: &mut RunState, patch: &Patch) -> Result<()> {
    let mut strategy = patch.strategy.unwrap_or(state.config.objective.strategy);
    if let Some(l) = patch.lambda {
        // A strategy that carries its own λ and a different `lambda` in the same patch
        // contradict each other: refuse rather than pick one.
        if let Some(given) = patch.strategy.and_then(|s| s.lambda())
            && given.get() != l.get()
        {
            return Err(OrchestratorError::invalid(
                "lambda",
                format!(
                    "{} conflicts with strategy `{}` in the same request; give λ once",
                    l.get(),
                    strategy
                ),
            ));
        }
        strategy = strategy
            .with_lambda(l)
            .map_err(|e| OrchestratorError::invalid("lambda", e))?;
    }
    if let Some(b) = patch.beta {
        rrlhf_ppo::controller::check_beta("beta", b)
            .map_err(|e| OrchestratorError::invalid("beta", e))?;
    }
    // Everything is valid: apply it all at once.
    state.config.objective.strategy = strategy;
    if let Some(b) = patch.beta {
        state.kl.set_beta(b);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rrlhf_ppo::RewardNorm;

    use super::*;
    use crate::config::OrchestratorConfig;
    use crate::prompts::Cursor;

    fn state() -> RunState {
        let config = OrchestratorConfig::default();
        RunState {
            step: 0,
            cursor: Cursor::default(),
            kl: config.ppo.kl,
            reward_norm: RewardNorm::default(),
            config,
        }
    }

    fn patch(json: &str) -> std::result::Result<Patch, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn a_patch_is_checked_as_it_is_read() {
        let p =
            patch(r#"{"lambda": 0.8, "strategy": "batch_worst_head:0.1", "beta": 0.2}"#).unwrap();
        assert_eq!(p.lambda.map(Lambda::get), Some(0.8));
        let err = patch(r#"{"lambda": 1.5}"#).unwrap_err().to_string();
        assert!(err.contains("λ must be in [0, 1]"), "{err}");
        assert!(patch(r#"{"strategy": "tradeoff:-1"}"#).is_err());
        assert!(patch(r#"{"lamda": 0.5}"#).is_err());
    }

    #[test]
    fn patches_apply_whole_or_not_at_all() {
        let mut s = state();
        apply_patch(&mut s, &patch(r#"{"lambda": 0.8, "beta": 0.2}"#).unwrap()).unwrap();
        assert_eq!(s.config.objective.strategy.to_string(), "tradeoff:0.8");
        assert_eq!(s.kl.beta(), 0.2);
        // A new strategy and its own λ.
        let p = patch(r#"{"strategy": "batch_worst_head:0.3", "lambda": 0.3}"#).unwrap();
        apply_patch(&mut s, &p).unwrap();
        assert_eq!(
            s.config.objective.strategy.to_string(),
            "batch_worst_head:0.3"
        );

        let before = s.clone();
        let err = apply_patch(
            &mut s,
            &patch(r#"{"strategy": "min", "lambda": 0.5}"#).unwrap(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "lambda: strategy `min` has no λ (use tradeoff or batch_worst_head)"
        );
        let err =
            apply_patch(&mut s, &patch(r#"{"lambda": 0.5, "beta": -1}"#).unwrap()).unwrap_err();
        assert!(matches!(&err, OrchestratorError::Invalid { field, .. } if field == "beta"));
        // A finite but absurd β (it overflowed the returns to NaN and failed the run) is
        // refused, as is a λ that contradicts the strategy sent with it.
        let err = apply_patch(&mut s, &patch(r#"{"beta": 1e308}"#).unwrap()).unwrap_err();
        assert!(
            err.to_string().starts_with("beta: ") && err.to_string().contains("[0, 10]"),
            "{err}"
        );
        let err = apply_patch(
            &mut s,
            &patch(r#"{"strategy": "tradeoff:0.4", "lambda": 0.9}"#).unwrap(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("lambda: 0.9 conflicts with strategy `tradeoff:0.4`"),
            "{err}"
        );
        assert_eq!(s, before, "a refused patch changes nothing");
    }
}
