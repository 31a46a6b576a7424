//! What a training service (actor, critic) keeps beside its model's weights: the AdamW state
//! (created on first use, saved and restored with checkpoints), its weight decay, and — with
//! several ranks — the data-parallel group, whose ZeRO stage decides whether that state is
//! replicated or sharded ([`crate::zero`]). Every method goes in step with the other ranks.

use std::cell::RefCell;
use std::path::Path;

use rrlhf_model::ModelError;
use tch::{Tensor, nn};

use crate::data_parallel::{self, DataParallel, MinibatchLoss, Optimizer, TokenMean, UpdatePlan};
use crate::error::{Result, TrainError};
use crate::optim::{self, AdamW};
use crate::zero::{self, ShardedAdamW, ZeroStage};

/// The optimizer of a training service: replicated on every rank, or sharded over them.
#[derive(Debug)]
enum TrainOptimizer {
    Replicated(AdamW),
    Sharded(ShardedAdamW),
}

impl TrainOptimizer {
    fn as_dyn(&mut self) -> &mut dyn Optimizer {
        match self {
            Self::Replicated(o) => o,
            Self::Sharded(o) => o,
        }
    }
}

#[derive(Debug)]
pub struct TrainState {
    optimizer: RefCell<Option<TrainOptimizer>>,
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
    /// calls), then [`data_parallel::run_updates`] over samples of the given token `lengths`. A
    /// rank that cannot create its optimizer still tells the others.
    pub fn train<S: TokenMean>(
        &self,
        vs: &nn::VarStore,
        lengths: &[usize],
        plan: &UpdatePlan,
        loss_of: impl FnMut(&[usize]) -> Result<MinibatchLoss<S>>,
    ) -> Result<Vec<(S, f64)>> {
        let mut slot = self.optimizer.borrow_mut();
        if slot.is_none() {
            *slot = Some(self.fresh_optimizer(vs).inspect_err(|_| self.reject())?);
        }
        let opt = slot.as_mut().expect("created above");
        data_parallel::run_updates(opt.as_dyn(), self.dp.as_ref(), lengths, plan, loss_of)
    }

    /// Forgets the optimizer state (AdamW moments, step count): the next `Train` starts with
    /// fresh ones, as a new run's first update does.
    pub fn forget_optimizer(&self) {
        *self.optimizer.borrow_mut() = None;
    }

    /// A `Train` call this rank rejected: the other ranks hear so instead of waiting for it.
    pub fn reject(&self) {
        data_parallel::abstain(self.dp.as_ref());
    }

    /// Fresh moments for the model in `vs`: sharded when the group's ZeRO stage says so.
    fn fresh_optimizer(&self, vs: &nn::VarStore) -> Result<TrainOptimizer> {
        Ok(match &self.dp {
            Some(dp) if dp.zero() != ZeroStage::Off => {
                TrainOptimizer::Sharded(ShardedAdamW::new(vs, self.weight_decay, dp)?)
            }
            _ => TrainOptimizer::Replicated(AdamW::new(vs, self.weight_decay)?),
        })
    }

    /// Bytes the optimizer holds on this rank (0 before the first update): moments, fp32
    /// masters and fp32 gradients (a replicated group's reduction copies, or under ZeRO this
    /// rank's shards of all of them, about 1/N).
    pub fn optimizer_bytes(&self) -> i64 {
        match &*self.optimizer.borrow() {
            None => 0,
            Some(TrainOptimizer::Replicated(o)) => o.held_bytes(),
            Some(TrainOptimizer::Sharded(o)) => o.held_bytes(),
        }
    }

    /// Writes a checkpoint directory atomically (it appears whole or not at all): what
    /// `write_model` writes (weights, config, tokenizer) and the optimizer state.
    ///
    /// In a data-parallel group every rank must be called (as for `Train` and loads): rank 0
    /// writes the group's checkpoint; under ZeRO the other ranks first send it their shards of
    /// the optimizer state (gathered before any file is touched, so a failed write on rank 0
    /// cannot leave the others waiting); in a replicated group they have nothing to add.
    pub fn checkpoint(
        &self,
        dir: &Path,
        write_model: impl FnOnce(&Path) -> Result<(), ModelError>,
    ) -> Result<(), ModelError> {
        let slot = self.optimizer.borrow();
        let gathered = match (&self.dp, &*slot) {
            (Some(dp), _) if dp.zero() != ZeroStage::Off => self
                .gather_sharded(dp, slot.as_ref())
                .map_err(|e| optim::checkpoint_error(dir, e))?,
            _ => None,
        };
        if self.dp.as_ref().is_some_and(|dp| dp.rank() != 0) {
            return Ok(());
        }
        rrlhf_model::fsio::write_dir_atomic(dir, |tmp| {
            write_model(tmp)?;
            match (gathered, &*slot) {
                (Some(named), _) => {
                    rrlhf_model::tensor_files::write_file(&tmp.join(optim::OPTIMIZER_FILE), named)
                }
                (None, Some(TrainOptimizer::Replicated(o))) => {
                    optim::save_into_checkpoint(Some(o), tmp)
                }
                _ => Ok(()),
            }
        })
    }

    /// Under ZeRO: after checking that every rank has an optimizer (or none does), gathers
    /// the state to rank 0 (`Some` there when there is one).
    fn gather_sharded(
        &self,
        dp: &DataParallel,
        optimizer: Option<&TrainOptimizer>,
    ) -> Result<Option<Vec<(String, Tensor)>>> {
        let sharded = match optimizer {
            Some(TrainOptimizer::Sharded(o)) => Some(o),
            _ => None,
        };
        let holding = dp.sum(&[if sharded.is_some() { 1.0 } else { 0.0 }])?[0];
        match sharded {
            _ if holding == 0.0 => Ok(None),
            Some(o) if holding == dp.world_size() as f64 => o.gather_state(dp),
            _ => Err(TrainError::Invalid(format!(
                "only {holding} of the {} ranks hold optimizer state (a failed first update?); \
                 train once more or load a checkpoint before saving",
                dp.world_size()
            ))),
        }
    }

    /// Loads the checkpoint at `dir` into the model in `vs` and the optimizer. Alone: validated,
    /// then copied (a bad checkpoint changes nothing). In a group: rank 0 reads `dir` (the
    /// others never need to see it), the ranks learn whether it succeeded, and — either way —
    /// all then take rank 0's weights and optimizer state, so a load that failed half-way on
    /// rank 0 still leaves every rank equal. Under ZeRO rank 0 checks the optimizer file before
    /// the ranks agree, then sends it bucket by bucket and each rank keeps its shard; the file
    /// may come from any world size or stage. The call fails on every rank when rank 0's read
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
        let Some(dp) = &self.dp else {
            return self.read_replicated(slot, vs, read_weights, dir);
        };
        let local = match (dp.rank(), dp.zero()) {
            (0, ZeroStage::Off) => self
                .read_replicated(slot, vs, read_weights, dir)
                .map(|_| None),
            (0, _) => read_weights(dir).and_then(|_| {
                let path = dir.join(optim::OPTIMIZER_FILE);
                match path.exists() {
                    true => zero::check_state_file(&path, vs)
                        .map(Some)
                        .map_err(|e| optim::checkpoint_error(dir, e)),
                    false => Ok(None),
                }
            }),
            _ => Ok(None),
        };
        let failed = dp.any_failed(local.is_err())?;
        dp.broadcast_parameters(vs)?;
        match dp.zero() {
            ZeroStage::Off => {
                let mut replicated = match slot.take() {
                    Some(TrainOptimizer::Replicated(o)) => Some(o),
                    _ => None,
                };
                dp.broadcast_optimizer(&mut replicated, vs, self.weight_decay)?;
                *slot = replicated.map(TrainOptimizer::Replicated);
            }
            _ => {
                let file = local.as_ref().ok().and_then(Option::as_ref);
                *slot = self
                    .scatter_sharded(dp, vs, file)
                    .map_err(|e| optim::checkpoint_error(dir, e))?;
            }
        }
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

impl TrainState {
    /// A lone rank's (or a replicated group's rank 0's) read: weights, then the optimizer state
    /// saved with them (none: forgotten, it belonged to other weights).
    fn read_replicated(
        &self,
        slot: &mut Option<TrainOptimizer>,
        vs: &nn::VarStore,
        read_weights: impl FnOnce(&Path) -> Result<(), ModelError>,
        dir: &Path,
    ) -> Result<(), ModelError> {
        read_weights(dir)?;
        let mut replicated = None;
        optim::restore_from_checkpoint(&mut replicated, vs, self.weight_decay, dir)?;
        *slot = replicated.map(TrainOptimizer::Replicated);
        Ok(())
    }

    /// Under ZeRO, after the weights were broadcast: every rank learns from rank 0 whether a
    /// state was read (`file`, on rank 0) and, if so, takes its shard of it.
    fn scatter_sharded(
        &self,
        dp: &DataParallel,
        vs: &nn::VarStore,
        file: Option<&rrlhf_model::tensor_files::MappedFile>,
    ) -> Result<Option<TrainOptimizer>> {
        let flag = Tensor::from_slice(&[if file.is_some() { 1.0f64 } else { 0.0 }]);
        let flag = flag.to_device(vs.device());
        dp.broadcast(&[flag.shallow_clone()])?;
        if flag.to_device(tch::Device::Cpu).double_value(&[0]) == 0.0 {
            return Ok(None);
        }
        let made = ShardedAdamW::new(vs, self.weight_decay, dp);
        if dp.any_failed(made.is_err())? {
            made?;
            return Err(TrainError::Invalid(
                "another data-parallel rank could not create its optimizer".into(),
            ));
        }
        let mut opt = made?;
        opt.load_state(dp, file)?;
        Ok(Some(TrainOptimizer::Sharded(opt)))
    }
}
