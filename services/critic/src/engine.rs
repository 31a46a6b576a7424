//! The critic's engine: the critic on its engine thread: a single-scalar-head reward-model layout read at every
//! token, its AdamW state, and the work items the engine runs in arrival order (consecutive
//! `Values` items share one forward pass). With several ranks, training, checkpoint loads and
//! start-up go in step with the other ranks (`rrlhf_train::data_parallel`).

use std::path::Path;

use rrlhf_model::batch::{Batch, PadSide, SCORING_BATCH_TOKENS, by_length_buckets, rows_f32};
use rrlhf_model::losses::value_loss;
use rrlhf_model::reward_model::{RewardKind, RewardModel};
use rrlhf_model::{LoraConfig, ModelError, Placement};
use rrlhf_runtime::engine::run_in_arrival_order;
use rrlhf_runtime::training_rpc::{TrainDone, TrainWork, Trainable};
use rrlhf_train::data_parallel::{
    DataParallel, MinibatchLoss, UpdatePlan, UpdateSummary, pair_lengths,
};
use rrlhf_train::start_weights::StartWeights;
use rrlhf_train::train_state::TrainState;
use tch::{Kind, Tensor};

pub type Pair = (Vec<i64>, Vec<i64>);

/// One PPO value update, validated by the service.
#[derive(Debug, Clone)]
pub struct TrainJob {
    pub pairs: Vec<Pair>,
    pub old_values: Vec<Vec<f32>>,
    pub returns: Vec<Vec<f32>>,
    pub value_clip: Option<f64>,
    /// Mini-batches, epochs, learning rate, clipping, seed.
    pub plan: UpdatePlan,
}

/// A value update's report: the value loss and the update counts.
pub type TrainStats = UpdateSummary;

#[derive(Debug)]
pub enum Work {
    Values(Pair),
    Training(TrainWork<TrainJob>),
}

#[derive(Debug)]
pub enum Done {
    Values(Vec<f32>),
    Training(TrainDone<TrainStats>),
}

rrlhf_runtime::training_work!(Work, Done, TrainJob, TrainStats);

pub struct Critic {
    model: RewardModel,
    /// AdamW state and, with several ranks, the data-parallel group.
    training: TrainState,
    /// What a new run starts from (`LoadCheckpoint` with `start_weights`), and the model
    /// directory the weights came from (a LoRA checkpoint's base).
    start: StartWeights,
}

impl Critic {
    /// Loads a stage-1 reward model (or a saved critic) as the critic, with LoRA adapters on
    /// a frozen backbone when `lora` is given (the value head trains fully); with `dp`, then
    /// takes rank 0's trainable weights so all ranks start equal.
    pub fn load(
        dir: &Path,
        placement: Placement,
        weight_decay: f64,
        lora: Option<&LoraConfig>,
        dp: Option<DataParallel>,
    ) -> Result<Self, ModelError> {
        let mut model = RewardModel::from_dir(dir, placement)?;
        if model.meta.kind != RewardKind::BradleyTerry {
            return Err(ModelError::InvalidInput(format!(
                "{} is a {:?} model; the critic starts from a stage-1 (Bradley–Terry) reward model",
                dir.display(),
                model.meta.kind
            )));
        }
        if let Some(cfg) = lora {
            model.add_lora(cfg)?;
        }
        let training = TrainState::new(&model.vs, weight_decay, dp)?;
        // After the broadcast: every rank keeps rank 0's adapters and head.
        let start = StartWeights::capture(&model.vs, dir, lora.is_some());
        Ok(Self {
            model,
            training,
            start,
        })
    }

    /// Recompute each decoder layer in backward instead of keeping its activations.
    pub fn set_activation_checkpointing(&mut self, on: bool) {
        self.model.backbone.activation_checkpointing = on;
    }

    pub fn vocab_size(&self) -> i64 {
        self.model.cfg.vocab_size
    }

    /// `[B, T]` values of right-padded prompt+response rows, and the pairs' response slices.
    fn forward(&self, pairs: &[Pair]) -> Result<(Tensor, Vec<(usize, usize)>), ModelError> {
        let seqs: Vec<Vec<i64>> = pairs
            .iter()
            .map(|(p, r)| p.iter().chain(r).copied().collect())
            .collect();
        let batch = Batch::pad(&seqs, 0, PadSide::Right, self.model.vs.device())?;
        let values = self.model.token_values(&batch)?;
        // The state in which response token t is chosen is read at position p_len − 1 + t.
        let spans = pairs.iter().map(|(p, r)| (p.len() - 1, r.len())).collect();
        Ok((values, spans))
    }

    /// Per-token values of every pair, in length-sorted passes of bounded padding.
    pub fn values(&self, pairs: &[Pair]) -> Result<Vec<Vec<f32>>, ModelError> {
        let _guard = tch::no_grad_guard();
        let lengths: Vec<usize> = pairs.iter().map(|(p, r)| p.len() + r.len()).collect();
        by_length_buckets(&lengths, SCORING_BATCH_TOKENS, |idx| {
            let bucket: Vec<Pair> = idx.iter().map(|&i| pairs[i].clone()).collect();
            let (values, spans) = self.forward(&bucket)?;
            Ok(rows_f32(&values)?
                .into_iter()
                .zip(spans)
                .map(|(row, (start, n))| row[start..start + n].to_vec())
                .collect())
        })
    }

    /// Mini-batch × epoch updates with the clipped value loss.
    pub fn value_update(&self, job: &TrainJob) -> Result<TrainStats, ModelError> {
        let done = self.training.train(
            &self.model.vs,
            &pair_lengths(&job.pairs),
            &job.plan,
            |idx| self.minibatch_loss(job, idx),
        )?;
        Ok(UpdateSummary::of(&done, |loss| *loss, &self.model.vs))
    }

    /// The clipped value loss of the samples `idx` (and its value, to report).
    fn minibatch_loss(
        &self,
        job: &TrainJob,
        idx: &[usize],
    ) -> rrlhf_train::Result<MinibatchLoss<f64>> {
        let pairs: Vec<Pair> = idx.iter().map(|&i| job.pairs[i].clone()).collect();
        let (values, spans) = self.forward(&pairs)?;
        let width = values.size()[1];
        // Targets laid out like `values`, with a mask over each response span.
        let rows = idx.len();
        let mut old = vec![0f32; rows * width as usize];
        let mut ret = vec![0f32; rows * width as usize];
        let mut mask = vec![0f32; rows * width as usize];
        for (r, (&i, &(start, len))) in idx.iter().zip(&spans).enumerate() {
            for t in 0..len {
                let k = r * width as usize + start + t;
                old[k] = job.old_values[i][t];
                ret[k] = job.returns[i][t];
                mask[k] = 1.0;
            }
        }
        let device = values.device();
        let shape = [rows as i64, width];
        let to = |v: &[f32]| Tensor::from_slice(v).view(shape).to_device(device);
        let loss = value_loss(&values, &to(&old), &to(&ret), &to(&mask), job.value_clip);
        let stats = loss.to_kind(Kind::Double).double_value(&[]);
        Ok(MinibatchLoss::masked(loss, &mask, stats))
    }

    /// Runs a merged batch of work in arrival order; consecutive `Values` items share one
    /// forward pass.
    pub fn run(&self, work: &[Work]) -> Result<Vec<Done>, ModelError> {
        run_in_arrival_order(
            work,
            |w| match w {
                Work::Values(pair) => Some(pair),
                _ => None,
            },
            |pairs| Ok(self.values(pairs)?.into_iter().map(Done::Values).collect()),
            |w| match w {
                Work::Training(w) => Ok(Done::Training(self.run_training(w)?)),
                Work::Values(_) => unreachable!("values run batched"),
            },
        )
    }
}

impl Trainable for Critic {
    type Job = TrainJob;
    type Stats = TrainStats;
    type Error = ModelError;

    fn train(&self, job: &TrainJob) -> Result<TrainStats, ModelError> {
        self.value_update(job)
    }

    fn reject(&self) {
        self.training.reject();
    }

    /// Writes the weights and optimizer state to `dir` atomically (the whole directory
    /// appears at once).
    fn save(&self, dir: &Path) -> Result<(), ModelError> {
        let base = self.start.source().display().to_string();
        self.training
            .checkpoint(dir, |tmp| self.model.save_trainable(tmp, &base))
    }

    /// Copies a saved checkpoint's weights into the live model (same shapes, strict names) and
    /// restores the optimizer state saved with them. With several ranks, rank 0 reads `dir`
    /// and all ranks then take rank 0's state.
    fn load(&self, dir: &Path) -> Result<(), ModelError> {
        self.training
            .load(&self.model.vs, |dir| self.model.load_trainable(dir), dir)
    }

    fn load_start(&self) -> Result<(), ModelError> {
        self.start
            .restore(&self.model.vs, |dir| self.model.load_trainable(dir))?;
        self.training.forget_optimizer();
        Ok(())
    }
}
