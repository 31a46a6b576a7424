//! The critic on its engine thread: a single-scalar-head reward-model layout read at every
//! token, its AdamW state, and the work items the engine runs in arrival order (consecutive
//! `Values` items share one forward pass).

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use rrlhf_model::batch::{Batch, PadSide, rows_f32};
use rrlhf_model::losses::value_loss;
use rrlhf_model::reward_model::{RewardKind, RewardModel};
use rrlhf_model::{ModelError, Placement};
use rrlhf_train::optim::{self, AdamW};
use rrlhf_train::sampler::Order;
use tch::{Kind, Tensor};

pub type Pair = (Vec<i64>, Vec<i64>);

/// One PPO value update, validated by the service.
#[derive(Debug, Clone)]
pub struct TrainJob {
    pub pairs: Vec<Pair>,
    pub old_values: Vec<Vec<f32>>,
    pub returns: Vec<Vec<f32>>,
    pub minibatch_size: usize,
    pub epochs: usize,
    pub lr: f64,
    pub value_clip: Option<f64>,
    pub max_grad_norm: f64,
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainStats {
    pub loss_first: f64,
    pub loss_last: f64,
    pub loss_mean: f64,
    pub updates: usize,
    pub grad_norm_mean: f64,
}

#[derive(Debug)]
pub enum Work {
    Values(Pair),
    Train(Box<TrainJob>),
    Save(PathBuf),
    Load(PathBuf),
}

#[derive(Debug)]
pub enum Done {
    Values(Vec<f32>),
    Trained(TrainStats),
    Saved,
    Loaded,
}

pub struct Critic {
    model: RewardModel,
    optimizer: RefCell<Option<AdamW>>,
    weight_decay: f64,
}

impl Critic {
    /// Loads a stage-1 reward model (or a saved critic) as the critic.
    pub fn load(dir: &Path, placement: Placement, weight_decay: f64) -> Result<Self, ModelError> {
        let model = RewardModel::from_dir(dir, placement)?;
        if model.meta.kind != RewardKind::BradleyTerry {
            return Err(ModelError::InvalidInput(format!(
                "{} is a {:?} model; the critic starts from a stage-1 (Bradley–Terry) reward model",
                dir.display(),
                model.meta.kind
            )));
        }
        Ok(Self {
            model,
            optimizer: RefCell::new(None),
            weight_decay,
        })
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

    pub fn values(&self, pairs: &[Pair]) -> Result<Vec<Vec<f32>>, ModelError> {
        let _guard = tch::no_grad_guard();
        let (values, spans) = self.forward(pairs)?;
        Ok(rows_f32(&values)?
            .into_iter()
            .zip(spans)
            .map(|(row, (start, n))| row[start..start + n].to_vec())
            .collect())
    }

    /// Mini-batch × epoch updates with the clipped value loss.
    pub fn train(&self, job: &TrainJob) -> Result<TrainStats, ModelError> {
        let mut slot = self.optimizer.borrow_mut();
        let opt = optim::get_or_init(&mut slot, &self.model.vs, self.weight_decay)?;
        let n = job.pairs.len();
        let mb = if job.minibatch_size == 0 {
            n
        } else {
            job.minibatch_size.min(n)
        };
        let mut order = Order::new(n, job.seed);
        let (mut losses, mut norms) = (Vec::new(), Vec::new());
        for _ in 0..job.epochs.max(1) {
            for _ in 0..n.div_ceil(mb) {
                let idx: Vec<usize> = (0..mb).map(|_| order.next()).collect();
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
                let norm = opt
                    .step(&loss, job.lr, job.max_grad_norm)
                    .map_err(|e| ModelError::InvalidInput(e.to_string()))?;
                losses.push(loss.to_kind(Kind::Double).double_value(&[]));
                norms.push(norm);
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        Ok(TrainStats {
            loss_first: losses[0],
            loss_last: *losses.last().expect("at least one update"),
            loss_mean: mean(&losses),
            updates: losses.len(),
            grad_norm_mean: mean(&norms),
        })
    }

    /// Writes the weights to `dir` atomically (the whole directory appears at once).
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        rrlhf_model::fsio::write_dir_atomic(dir, |tmp| {
            self.model.save(tmp)?;
            optim::save_into_checkpoint(self.optimizer.borrow().as_ref(), tmp)
        })
    }

    /// Copies a saved checkpoint's weights into the live model (same shapes, strict names) and
    /// restores the optimizer state saved with them.
    pub fn load_weights(&self, dir: &Path) -> Result<(), ModelError> {
        rrlhf_model::checkpoint::load_strict(
            &self.model.vs,
            dir,
            self.model.cfg.tie_word_embeddings,
        )?;
        optim::restore_from_checkpoint(
            &mut self.optimizer.borrow_mut(),
            &self.model.vs,
            self.weight_decay,
            dir,
        )
    }

    /// Runs a merged batch of work in arrival order.
    pub fn run(&self, work: &[Work]) -> Result<Vec<Done>, ModelError> {
        let mut out = Vec::with_capacity(work.len());
        let mut i = 0;
        while i < work.len() {
            match &work[i] {
                Work::Values(_) => {
                    let mut pairs = Vec::new();
                    while let Some(Work::Values(p)) = work.get(i) {
                        pairs.push(p.clone());
                        i += 1;
                    }
                    out.extend(self.values(&pairs)?.into_iter().map(Done::Values));
                    continue;
                }
                Work::Train(job) => out.push(Done::Trained(self.train(job)?)),
                Work::Save(dir) => {
                    self.save(dir)?;
                    out.push(Done::Saved);
                }
                Work::Load(dir) => {
                    self.load_weights(dir)?;
                    out.push(Done::Loaded);
                }
            }
            i += 1;
        }
        Ok(out)
    }
}
