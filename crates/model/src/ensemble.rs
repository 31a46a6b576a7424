//! Deep ensembles served as one model: K stage-1 reward models trained independently (other
//! seeds, as Coste et al. 2023 ensemble them) are copied into one directory whose K "heads" are
//! the members' scores, so the reward service and every aggregation strategy take them
//! unchanged. Also the tensor copy that seeds per-head towers from the backbone.

use std::path::Path;

use tch::Tensor;

use crate::Placement;
use crate::error::{ModelError, Result};
use crate::reward_model::{RewardKind, RewardMeta, RewardModel};

/// Copies, inside one var store, every variable `target` for which `source_of(target)` names
/// another variable, from that variable (shapes must agree).
pub fn copy_within(
    vs: &tch::nn::VarStore,
    source_of: impl Fn(&str) -> Option<String>,
) -> Result<()> {
    let vars = vs.variables();
    let _guard = tch::no_grad_guard();
    for (name, target) in &vars {
        let Some(from) = source_of(name) else {
            continue;
        };
        let source = vars.get(&from).ok_or_else(|| {
            ModelError::InvalidInput(format!("{name} should start from {from}, which is missing"))
        })?;
        copy(name, &mut target.shallow_clone(), source)?;
    }
    Ok(())
}

fn copy(name: &str, target: &mut Tensor, source: &Tensor) -> Result<()> {
    if target.size() != source.size() {
        return Err(ModelError::InvalidInput(format!(
            "{name}: shape {:?} cannot take a tensor of shape {:?}",
            target.size(),
            source.size()
        )));
    }
    target.f_copy_(source)?;
    Ok(())
}

/// One K-head model from the stage-1 reward models at `members` (same architecture and
/// vocabulary); member 0 is the nominal head.
pub fn assemble(members: &[&Path], placement: Placement) -> Result<RewardModel> {
    let first = members
        .first()
        .ok_or_else(|| ModelError::InvalidInput("a deep ensemble needs members".into()))?;
    let loaded: Vec<RewardModel> = members
        .iter()
        .map(|dir| RewardModel::from_dir(dir, placement))
        .collect::<Result<_>>()?;
    for (model, dir) in loaded.iter().zip(members) {
        if model.meta.kind != RewardKind::BradleyTerry {
            return Err(ModelError::InvalidInput(format!(
                "{} is not a stage-1 (Bradley–Terry) reward model: members of a deep ensemble are",
                dir.display()
            )));
        }
        if shape(&model.cfg) != shape(&loaded[0].cfg) {
            return Err(ModelError::InvalidInput(format!(
                "{} has another architecture than {}: ensemble members must match",
                dir.display(),
                first.display()
            )));
        }
    }
    let names = members.iter().map(|d| d.display().to_string()).collect();
    let meta = RewardMeta::ensemble(names)?;
    let ensemble = RewardModel::blank(loaded[0].cfg.clone(), meta, placement);
    let targets = ensemble.vs.variables();
    let _guard = tch::no_grad_guard();
    let mut copied = 0;
    for (h, member) in loaded.iter().enumerate() {
        for (name, source) in member.vs.variables() {
            let target_name = if h == 0 {
                name.clone()
            } else {
                format!("ensemble.{h}.{name}")
            };
            let target = targets.get(&target_name).ok_or_else(|| {
                ModelError::InvalidInput(format!(
                    "member {h} ({}) has a tensor {name} the ensemble does not",
                    members[h].display()
                ))
            })?;
            copy(&target_name, &mut target.shallow_clone(), &source)?;
            copied += 1;
        }
    }
    // The ensemble starts unfilled: every tensor must have come from a member.
    if copied != targets.len() {
        return Err(ModelError::InvalidInput(format!(
            "the members filled {copied} of the ensemble's {} tensors",
            targets.len()
        )));
    }
    Ok(ensemble)
}

/// What two members must share to stack: every dimension and the vocabulary.
fn shape(cfg: &crate::config::ModelConfig) -> [i64; 7] {
    [
        cfg.vocab_size,
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_hidden_layers,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    ]
}
