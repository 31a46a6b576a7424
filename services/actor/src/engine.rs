//! The actor's engine: the policy on its engine thread: a causal LM, its tokenizer (for decoded text), its AdamW
//! state, and the work the engine runs in arrival order (consecutive `LogProbs` items share one
//! forward pass; a `Generate` streams each finished sample through its channel at once). With
//! several ranks, training, checkpoint loads and start-up go in step with the other ranks
//! (`rrlhf_train::data_parallel`).

use std::path::Path;

use rrlhf_model::batch::{Batch, PadSide};
use rrlhf_model::causal_lm::response_window_start;
use rrlhf_model::generate::{FinishReason, Generation};
use rrlhf_model::lora::AdapterSwitch;
use rrlhf_model::losses::{entropy, ppo_policy_loss};
use rrlhf_model::{CausalLm, LoraConfig, ModelError, Placement, SamplingParams, TextTokenizer};
use rrlhf_runtime::engine::run_in_arrival_order;
use rrlhf_runtime::training_rpc::{TrainDone, TrainWork, Trainable};
use rrlhf_train::data_parallel::{
    DataParallel, MinibatchLoss, UpdatePlan, UpdateSummary, mean_of, pair_lengths,
};
use rrlhf_train::start_weights::StartWeights;
use rrlhf_train::train_state::TrainState;
use tch::{Kind, Tensor};
use tokio::sync::mpsc::UnboundedSender;

pub type Pair = (Vec<i64>, Vec<i64>);

/// A finished sample, ready to stream.
#[derive(Debug, Clone)]
pub struct Sampled {
    pub prompt_index: usize,
    pub sample_index: usize,
    pub tokens: Vec<i64>,
    pub text: String,
    pub logprobs: Vec<f32>,
    pub policy_logprobs: Vec<f32>,
    pub finish: FinishReason,
}

#[derive(Debug)]
pub struct GenerateJob {
    pub prompts: Vec<Vec<i64>>,
    pub samples_per_prompt: usize,
    pub params: SamplingParams,
    pub out: UnboundedSender<Sampled>,
}

/// One PPO policy update, validated by the service.
#[derive(Debug, Clone)]
pub struct PpoJob {
    pub pairs: Vec<Pair>,
    pub old_logprobs: Vec<Vec<f32>>,
    pub advantages: Vec<Vec<f32>>,
    pub clip_eps: f64,
    pub entropy_coef: f64,
    /// Mini-batches, epochs, learning rate, clipping, seed.
    pub plan: UpdatePlan,
}

/// A PPO update's report: the policy loss and the update counts, and PPO's own diagnostics
/// (means over the updates).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PpoStats {
    pub summary: UpdateSummary,
    pub clip_fraction: f64,
    pub approx_kl: f64,
    pub entropy: f64,
}

#[derive(Debug)]
pub enum Work {
    Generate(GenerateJob),
    LogProbs(Pair),
    /// Log-probabilities of all of a request's pairs under the base (adapters off).
    BaseLogProbs(Vec<Pair>),
    Training(TrainWork<PpoJob>),
}

#[derive(Debug)]
pub enum Done {
    Generated(usize),
    LogProbs(Vec<f32>),
    BaseLogProbs(Vec<Vec<f32>>),
    Training(TrainDone<PpoStats>),
}

rrlhf_runtime::training_work!(Work, Done, PpoJob, PpoStats);

pub struct Policy {
    pub model: CausalLm,
    pub tokenizer: Option<TextTokenizer>,
    /// AdamW state and, with several ranks, the data-parallel group.
    training: TrainState,
    /// What a new run starts from (`LoadCheckpoint` with `start_weights`), and the model
    /// directory the weights came from (a LoRA checkpoint's base).
    start: StartWeights,
}

impl Policy {
    /// Loads the policy, with LoRA adapters on a frozen base when `lora` is given; with `dp`,
    /// then takes rank 0's trainable weights so all ranks start equal.
    pub fn load(
        dir: &Path,
        placement: Placement,
        weight_decay: f64,
        lora: Option<&LoraConfig>,
        dp: Option<DataParallel>,
    ) -> Result<Self, ModelError> {
        let mut model = CausalLm::from_dir(dir, placement)?;
        if let Some(cfg) = lora {
            model.add_lora(cfg)?;
        }
        let tokenizer = TextTokenizer::load(dir).ok();
        let training = TrainState::new(&model.vs, weight_decay, dp)?;
        // After the broadcast: every rank keeps rank 0's adapters.
        let start = StartWeights::capture(&model.vs, dir, lora.is_some());
        Ok(Self {
            model,
            tokenizer,
            training,
            start,
        })
    }

    /// Bytes the optimizer holds on this rank (0 before the first update; see
    /// `TrainState::optimizer_bytes`).
    pub fn optimizer_bytes(&self) -> i64 {
        self.training.optimizer_bytes()
    }

    pub fn eos_id(&self) -> i64 {
        self.tokenizer
            .as_ref()
            .map(|t| t.eos_id)
            .or_else(|| self.model.cfg.eos_token_ids.first().copied())
            .unwrap_or(0)
    }

    fn pad_id(&self) -> i64 {
        self.tokenizer.as_ref().map_or(0, |t| t.pad_id)
    }

    fn generate(&self, job: &GenerateJob) -> Result<usize, ModelError> {
        let n = job.samples_per_prompt.max(1);
        let prompts: Vec<Vec<i64>> = job
            .prompts
            .iter()
            .flat_map(|p| std::iter::repeat_n(p.clone(), n))
            .collect();
        let mut sent = 0;
        rrlhf_model::generate(
            &self.model,
            &prompts,
            self.pad_id(),
            &job.params,
            |g: &Generation| {
                let text = self
                    .tokenizer
                    .as_ref()
                    .and_then(|t| t.decode(&g.tokens).ok())
                    .unwrap_or_default();
                let sample = Sampled {
                    prompt_index: g.index / n,
                    sample_index: g.index % n,
                    tokens: g.tokens.clone(),
                    text,
                    logprobs: g.logprobs.clone(),
                    policy_logprobs: g.policy_logprobs.clone(),
                    finish: g.finish,
                };
                // A caller that hung up stops receiving; generation of the batch still completes.
                if job.out.send(sample).is_ok() {
                    sent += 1;
                }
            },
        )?;
        Ok(sent)
    }

    pub fn logprobs(&self, pairs: &[Pair]) -> Result<Vec<Vec<f32>>, ModelError> {
        let _guard = tch::no_grad_guard();
        self.model.response_logprobs(pairs)
    }

    /// Log-probabilities under the base model: the LoRA adapters are switched off for this
    /// pass only. An actor without adapters has no base to offer.
    pub fn base_logprobs(&self, pairs: &[Pair]) -> Result<Vec<Vec<f32>>, ModelError> {
        let Some((_, switch)) = self.model.backbone.lora() else {
            return Err(ModelError::InvalidInput(
                "this actor has no LoRA adapters, so it has no frozen base to serve as the \
                 reference: serve a reference model instead"
                    .into(),
            ));
        };
        /// Switches the adapters back on however the pass ends.
        struct On<'a>(&'a AdapterSwitch);
        impl Drop for On<'_> {
            fn drop(&mut self) {
                self.0.set_enabled(true);
            }
        }
        switch.set_enabled(false);
        let _on = On(switch);
        self.logprobs(pairs)
    }

    /// PPO's clipped surrogate (minus the entropy bonus) over mini-batches × epochs.
    pub fn ppo_update(&self, job: &PpoJob) -> Result<PpoStats, ModelError> {
        let acc = self.training.train(
            &self.model.vs,
            &pair_lengths(&job.pairs),
            &job.plan,
            |idx| self.minibatch_loss(job, idx),
        )?;
        let mean = |f: fn(&(f64, f64, f64, f64)) -> f64| mean_of(acc.iter().map(|(s, _)| f(s)));
        Ok(PpoStats {
            summary: UpdateSummary::of(&acc, |s| s.0, &self.model.vs),
            clip_fraction: mean(|a| a.1),
            approx_kl: mean(|a| a.2),
            entropy: mean(|a| a.3),
        })
    }

    /// The loss of the samples `idx`, with (loss, clip fraction, approx KL, entropy) to report.
    fn minibatch_loss(
        &self,
        job: &PpoJob,
        idx: &[usize],
    ) -> rrlhf_train::Result<MinibatchLoss<(f64, f64, f64, f64)>> {
        let seqs: Vec<Vec<i64>> = idx
            .iter()
            .map(|&i| {
                job.pairs[i]
                    .0
                    .iter()
                    .chain(&job.pairs[i].1)
                    .copied()
                    .collect()
            })
            .collect();
        let batch = Batch::pad(&seqs, self.pad_id(), PadSide::Right, self.model.device())?;
        // The LM head runs only from the shortest prompt's last token on: the positions before
        // it predict no response token.
        let from = response_window_start(idx.iter().map(|&i| job.pairs[i].0.len()));
        let (logits, logp) = self.model.window_logprobs(&batch, from as i64);
        let width = logp.size()[1] as usize;
        let mut old = vec![0f32; idx.len() * width];
        let mut adv = vec![0f32; idx.len() * width];
        let mut mask = vec![0f32; idx.len() * width];
        for (r, &i) in idx.iter().enumerate() {
            let start = job.pairs[i].0.len() - 1 - from;
            for t in 0..job.pairs[i].1.len() {
                let k = r * width + start + t;
                old[k] = job.old_logprobs[i][t];
                adv[k] = job.advantages[i][t];
                mask[k] = 1.0;
            }
        }
        let shape = [idx.len() as i64, width as i64];
        let to = |v: &[f32]| Tensor::from_slice(v).view(shape).to_device(logp.device());
        let mask_t = to(&mask);
        let pl = ppo_policy_loss(&logp, &to(&old), &to(&adv), &mask_t, job.clip_eps);
        let window = logits.narrow(1, 0, width as i64);
        // Without a bonus the entropy is only reported: no graph (and no vocabulary-wide
        // backward) for it.
        let (ent, loss) = if job.entropy_coef == 0.0 {
            let ent = tch::no_grad(|| entropy(&window, &mask_t));
            (ent, pl.loss.shallow_clone())
        } else {
            let ent = entropy(&window, &mask_t);
            let loss = &pl.loss - &ent * job.entropy_coef;
            (ent, loss)
        };
        let v = |t: &Tensor| t.to_kind(Kind::Double).double_value(&[]);
        let stats = (
            v(&pl.loss),
            v(&pl.clip_fraction),
            v(&pl.approx_kl),
            v(&ent.detach()),
        );
        Ok(MinibatchLoss::masked(loss, &mask, stats))
    }

    /// Runs a merged batch of work in arrival order; consecutive `LogProbs` items share one
    /// forward pass.
    pub fn run(&self, work: &[Work]) -> Result<Vec<Done>, ModelError> {
        run_in_arrival_order(
            work,
            |w| match w {
                Work::LogProbs(pair) => Some(pair),
                _ => None,
            },
            |pairs| {
                Ok(self
                    .logprobs(pairs)?
                    .into_iter()
                    .map(Done::LogProbs)
                    .collect())
            },
            |w| match w {
                Work::Generate(job) => Ok(Done::Generated(self.generate(job)?)),
                Work::Training(w) => Ok(Done::Training(self.run_training(w)?)),
                Work::BaseLogProbs(pairs) => Ok(Done::BaseLogProbs(self.base_logprobs(pairs)?)),
                Work::LogProbs(_) => unreachable!("log-probabilities run batched"),
            },
        )
    }
}

impl Trainable for Policy {
    type Job = PpoJob;
    type Stats = PpoStats;
    type Error = ModelError;

    fn train(&self, job: &PpoJob) -> Result<PpoStats, ModelError> {
        self.ppo_update(job)
    }

    fn reject(&self) {
        self.training.reject();
    }

    /// Weights (with LoRA: the adapters, as a PEFT directory over the base this service
    /// loaded), optimizer state and the tokenizer, so the directory serves as a model (or an
    /// adapter) too.
    fn save(&self, dir: &Path) -> Result<(), ModelError> {
        self.training.checkpoint(dir, |tmp| {
            self.model
                .save_trainable(tmp, &self.start.source().display().to_string())?;
            self.tokenizer.as_ref().map_or(Ok(()), |t| t.save_to(tmp))
        })
    }

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
