//! The weights a training service (actor, critic) started with, to put back when a new run
//! begins on a service that an earlier run trained: without it the new run would silently
//! continue the old one's policy. A fully trained model reads its model directory again
//! (a second copy of an 8B model in memory is not affordable); a LoRA model keeps host copies
//! of its trainable tensors as they were at the start (adapters and any fully trained head:
//! small), since a fresh random draw of the adapters would not be the same start.

use std::path::{Path, PathBuf};

use rrlhf_model::ModelError;
use tch::{Device, Tensor, nn};

pub struct StartWeights {
    source: PathBuf,
    /// `(name, host copy)` of every trainable tensor, when they are kept rather than re-read.
    kept: Vec<(String, Tensor)>,
}

impl StartWeights {
    /// Notes how to get back `vs`'s current weights: re-read `source` (the directory they were
    /// loaded from), or, with `keep`, copies of the trainable tensors taken now.
    pub fn capture(vs: &nn::VarStore, source: &Path, keep: bool) -> Self {
        let kept = if keep {
            tch::no_grad(|| {
                vs.variables()
                    .into_iter()
                    .filter(|(_, t)| t.requires_grad())
                    .map(|(name, t)| (name, t.to_device(Device::Cpu).copy()))
                    .collect()
            })
        } else {
            Vec::new()
        };
        Self {
            source: source.to_path_buf(),
            kept,
        }
    }

    /// The directory the weights were loaded from (a LoRA model's base).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Writes the start weights back into `vs`: the kept copies, or what `reread` loads from
    /// the source directory (the model's own strict loader, so a changed file is an error, not
    /// a silent mix).
    pub fn restore(
        &self,
        vs: &nn::VarStore,
        reread: impl FnOnce(&Path) -> Result<(), ModelError>,
    ) -> Result<(), ModelError> {
        if self.kept.is_empty() {
            return reread(&self.source);
        }
        let mut live = vs.variables();
        tch::no_grad(|| {
            for (name, start) in &self.kept {
                let var = live.get_mut(name).ok_or_else(|| {
                    ModelError::InvalidInput(format!(
                        "start weight {name} is no longer in the model"
                    ))
                })?;
                var.f_copy_(start)?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_weights_come_back_after_changes() {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[2, 3], nn::Init::Const(0.5));
        let frozen = vs.root().var("frozen", &[2], nn::Init::Const(1.0));
        let _ = frozen.set_requires_grad(false);
        let start = StartWeights::capture(&vs, Path::new("/nonexistent"), true);
        tch::no_grad(|| {
            let _ = w.shallow_clone().fill_(7.0);
        });
        start
            .restore(&vs, |_| unreachable!("kept copies need no reading"))
            .unwrap();
        assert_eq!(w.max().double_value(&[]), 0.5);
        assert_eq!(w.min().double_value(&[]), 0.5);
    }

    #[test]
    fn a_full_model_rereads_its_source() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _ = vs.root().var("w", &[2], nn::Init::Const(0.5));
        let start = StartWeights::capture(&vs, Path::new("/models/sft"), false);
        let mut read = None;
        start
            .restore(&vs, |dir| {
                read = Some(dir.to_path_buf());
                Ok(())
            })
            .unwrap();
        assert_eq!(read.as_deref(), Some(Path::new("/models/sft")));
    }
}
