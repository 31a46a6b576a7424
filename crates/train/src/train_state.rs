//! What a training service (actor, critic) keeps beside its model's weights: the AdamW state
//! (created on first use, saved and restored with checkpoints), its weight decay, and — with
//! several ranks — the data-parallel group. Every method goes in step with the other ranks.

use std::cell::RefCell;
use std::path::Path;

use rrlhf_model::ModelError;
use tch::nn;

use crate::data_parallel::{self, DataParallel, MinibatchLoss, TokenMean, UpdatePlan};
use crate::error::Result;
use crate::optim::{self, AdamW};

#[derive(Debug)]
pub struct TrainState {
    optimizer: RefCell<Option<AdamW>>,
    weight_decay: f64,
    dp: Option<DataParallel>,
}

impl TrainState {
    /// The state of the model in `vs`; with `dp`, first makes `vs` hold rank 0's weights, so
    /// all ranks start equal.
    pub fn new(vs: &nn::VarStore, weight_decay: f64, dp: Option<DataParallel>) -> Result<Self> {
        if let Some(dp) = &dp {
            dp.broadcast_parameters(vs)?;
        }
        Ok(Self {
            optimizer: RefCell::new(None),
            weight_decay,
            dp,
        })
    }

    /// A `Train` call: the optimizer (created with fresh moments on first use, and kept across
    /// calls), then [`data_parallel::run_updates`] over `samples` samples. A rank that cannot
    /// create its optimizer still tells the others.
    pub fn train<S: TokenMean>(
        &self,
        vs: &nn::VarStore,
        samples: usize,
        plan: &UpdatePlan,
        loss_of: impl FnMut(&[usize]) -> Result<MinibatchLoss<S>>,
    ) -> Result<Vec<(S, f64)>> {
        let mut slot = self.optimizer.borrow_mut();
        if slot.is_none() {
            *slot = Some(AdamW::new(vs, self.weight_decay).inspect_err(|_| self.reject())?);
        }
        let opt = slot.as_mut().expect("created above");
        data_parallel::run_updates(opt, self.dp.as_ref(), samples, plan, loss_of)
    }

    /// A `Train` call this rank rejected: the other ranks hear so instead of waiting for it.
    pub fn reject(&self) {
        data_parallel::abstain(self.dp.as_ref());
    }

    /// Writes a checkpoint directory atomically (it appears whole or not at all): what
    /// `write_model` writes (weights, config, tokenizer) and the optimizer state.
    pub fn checkpoint(
        &self,
        dir: &Path,
        write_model: impl FnOnce(&Path) -> Result<(), ModelError>,
    ) -> Result<(), ModelError> {
        rrlhf_model::fsio::write_dir_atomic(dir, |tmp| {
            write_model(tmp)?;
            self.save_into(tmp)
        })
    }

    /// Writes the optimizer state, when there is one, into checkpoint directory `dir`.
    pub fn save_into(&self, dir: &Path) -> Result<(), ModelError> {
        optim::save_into_checkpoint(self.optimizer.borrow().as_ref(), dir)
    }

    /// Loads the checkpoint at `dir` into the model in `vs` and the optimizer. Alone: validated,
    /// then copied (a bad checkpoint changes nothing). In a group: rank 0 reads `dir` (the
    /// others never need to see it), the ranks learn whether it succeeded, and — either way —
    /// all then take rank 0's weights and optimizer state, so a load that failed half-way on
    /// rank 0 still leaves every rank equal. The call fails on every rank when rank 0's read
    /// did.
    ///
    /// `read_weights` copies the checkpoint's weights into the model (all of them, or a LoRA
    /// model's adapters), validating before copying.
    pub fn load(
        &self,
        vs: &nn::VarStore,
        read_weights: impl FnOnce(&Path) -> Result<(), ModelError>,
        dir: &Path,
    ) -> Result<(), ModelError> {
        let slot = &mut *self.optimizer.borrow_mut();
        let read = |slot: &mut Option<AdamW>| {
            read_weights(dir)?;
            optim::restore_from_checkpoint(slot, vs, self.weight_decay, dir)
        };
        let Some(dp) = &self.dp else {
            return read(slot);
        };
        let local = if dp.rank() == 0 { read(slot) } else { Ok(()) };
        let failed = dp.any_failed(local.is_err())?;
        dp.broadcast_parameters(vs)?;
        dp.broadcast_optimizer(slot, vs, self.weight_decay)?;
        local?;
        if failed {
            return Err(ModelError::InvalidInput(format!(
                "rank 0 could not load {}; see its error (this rank keeps rank 0's weights)",
                dir.display()
            )));
        }
        Ok(())
    }
}
