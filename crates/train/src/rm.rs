//! Reward-model training in the paper's two stages (§5.1, appendix B.1).
//!
//! Stage 1 trains a Bradley–Terry RM: `−log σ(r⁺ − r⁻)` on a scalar head at the EOS token,
//! backbone initialised from an SFT model. Stage 2 trains the BRME: K Gaussian heads on the
//! stage-1 backbone, every training pair assigned to one head (each head sees ~1/K of the data,
//! appendix B.2), each head regressing its reparameterised sample `μ + εσ` onto
//! `α(p̂ − ½)` / `α((1 − p̂) − ½)` where `p̂ = σ(r₁⁺ − r₁⁻)` comes from the frozen stage-1 RM
//! (eq. 8). The assignment is saved next to the checkpoint (`brme_assignment.json`).
//!
//! Heads that share everything but one linear row learn the same features and barely disagree,
//! which leaves the robust objective nothing to work with. Stage 2 therefore has diversity
//! options ([`HeadDiversity`]): each head on its own tower (a copy of the top decoder layers),
//! per-head noise on the towers' starting weights, and bootstrap resamples of the pairs
//! instead of a partition.

use std::path::Path;

use rrlhf_data::preference::PreferencePair;
use rrlhf_data::split;
use rrlhf_model::batch::{Batch, PadSide};
use rrlhf_model::losses::{bradley_terry, brme_mse};
use rrlhf_model::reward_model::{RewardKind, RewardMeta, RewardModel, TrainingSplit};
use rrlhf_model::{Placement, TextTokenizer};
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::error::{Result, TrainError};
use crate::optim::AdamW;
use crate::progress::{StepLogger, progress_bar};
pub use crate::rm_diversity::{HeadData, HeadDiversity, bootstrap_weights};
use crate::rm_diversity::{bootstrap_mse, perturb_towers};
use crate::schedule::WarmupCosine;

pub const ASSIGNMENT_FILE: &str = "brme_assignment.json";

#[derive(Debug, Clone)]
pub struct RmConfig {
    /// Optimiser steps; `None` derives them from `epochs`.
    pub steps: Option<usize>,
    pub epochs: f64,
    pub batch_size: usize,
    /// Pairs per forward/backward pass (0: the whole batch); the micro-batches' gradients are
    /// accumulated, pair-weighted, into the batch's update. Bounds activation memory.
    pub micro_batch_size: usize,
    /// Recompute each decoder layer in backward instead of keeping its activations.
    pub activation_checkpointing: bool,
    pub lr: f64,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    pub grad_clip: f64,
    pub max_len: usize,
    /// Share of pairs held out for validation (and, by default, for `rrlhf rm eval`).
    pub eval_fraction: f64,
    pub eval_every: usize,
    pub seed: u64,
    pub show_progress: bool,
    /// Stage 2: K and α.
    pub heads: i64,
    pub alpha: f64,
    /// Stage 2: what makes the heads differ.
    pub diversity: HeadDiversity,
}

impl Default for RmConfig {
    fn default() -> Self {
        Self {
            steps: None,
            epochs: 1.0,
            batch_size: 16,
            micro_batch_size: 0,
            activation_checkpointing: false,
            lr: 5e-4,
            warmup_steps: 10,
            weight_decay: 0.0,
            grad_clip: 1.0,
            max_len: 256,
            eval_fraction: 0.1,
            eval_every: 50,
            seed: 0,
            show_progress: true,
            heads: 5,
            alpha: 2.0,
            diversity: HeadDiversity::default(),
        }
    }
}

impl RmConfig {
    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Invalid(m));
        if self.batch_size == 0 {
            return bad("batch size must be ≥ 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("learning rate must be > 0, got {}", self.lr));
        }
        if self.steps == Some(0)
            || (self.steps.is_none() && (self.epochs.is_nan() || self.epochs <= 0.0))
        {
            return bad("train for at least one step (--steps N or --epochs > 0)".into());
        }
        if !(self.eval_fraction > 0.0 && self.eval_fraction < 1.0) {
            return bad(format!(
                "eval fraction must be in (0, 1), got {}",
                self.eval_fraction
            ));
        }
        if self.heads < 1 {
            return bad(format!("the BRME needs K ≥ 1 heads, got {}", self.heads));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return bad(format!("α must be > 0, got {}", self.alpha));
        }
        let noise = self.diversity.tower_init_noise;
        if !(noise.is_finite() && noise >= 0.0) {
            return bad(format!("tower init noise must be ≥ 0, got {noise}"));
        }
        if noise > 0.0 && self.diversity.tower_layers == 0 {
            return bad("tower init noise needs towers (tower layers ≥ 1)".into());
        }
        Ok(())
    }

    fn split_record(&self, data: &Path) -> TrainingSplit {
        TrainingSplit {
            data: data.display().to_string(),
            seed: self.seed,
            eval_fraction: self.eval_fraction,
        }
    }

    fn total_steps(&self, train_pairs: usize) -> usize {
        self.steps.unwrap_or_else(|| {
            ((self.epochs * train_pairs as f64) / self.batch_size as f64)
                .ceil()
                .max(1.0) as usize
        })
    }
}

/// A tokenised preference pair.
#[derive(Debug, Clone)]
pub struct EncodedPair {
    pub chosen: Vec<i64>,
    pub rejected: Vec<i64>,
}

pub fn encode_pairs(
    tok: &TextTokenizer,
    pairs: &[PreferencePair],
    max_len: usize,
) -> Result<Vec<EncodedPair>> {
    pairs
        .iter()
        .map(|p| {
            Ok(EncodedPair {
                chosen: tok.encode_pair(&p.prompt, &p.chosen, max_len)?.0,
                rejected: tok.encode_pair(&p.prompt, &p.rejected, max_len)?.0,
            })
        })
        .collect()
}

/// Head outputs for chosen (`[n, K]`) and rejected (`[n, K]`) of `pairs`, in one padded batch.
fn forward_pairs(
    model: &RewardModel,
    pairs: &[&EncodedPair],
    pad_id: i64,
) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let seqs: Vec<Vec<i64>> = pairs
        .iter()
        .map(|p| p.chosen.clone())
        .chain(pairs.iter().map(|p| p.rejected.clone()))
        .collect();
    let batch = Batch::pad(&seqs, pad_id, PadSide::Right, model.vs.device())?;
    let out = model.forward(&batch)?;
    let n = pairs.len() as i64;
    Ok((
        out.mu.narrow(0, 0, n),
        out.sigma.narrow(0, 0, n),
        out.mu.narrow(0, n, n),
        out.sigma.narrow(0, n, n),
    ))
}

/// The pairs a run trains and validates on: the same seed and fraction give the same split in
/// both stages and in `rrlhf rm eval`.
pub fn split_pairs(
    pairs: Vec<PreferencePair>,
    seed: u64,
    eval_fraction: f64,
) -> (Vec<PreferencePair>, Vec<PreferencePair>) {
    split::train_test(pairs, seed, eval_fraction)
}

#[derive(Debug, Clone, Serialize)]
pub struct RmOutcome {
    pub stage: u8,
    pub train_pairs: usize,
    pub validation_pairs: usize,
    pub steps: usize,
    pub initial_validation: Validation,
    pub final_validation: Validation,
    pub seconds: f64,
    /// Stage 2: mean σ of each pair's assigned head over its training pairs, before and after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assigned_sigma: Option<(f64, f64)>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Validation {
    pub loss: f64,
    /// Accuracy of the nominal reward (stage 1: the scalar reward); ties count ½.
    pub accuracy: f64,
    /// Accuracy of the head mean (stage 2).
    pub mean_accuracy: f64,
}

fn accuracy(chosen: &Tensor, rejected: &Tensor) -> f64 {
    let wins = chosen
        .gt_tensor(rejected)
        .to_kind(Kind::Float)
        .sum(Kind::Float)
        .double_value(&[]);
    let ties = chosen
        .eq_tensor(rejected)
        .to_kind(Kind::Float)
        .sum(Kind::Float)
        .double_value(&[]);
    (wins + 0.5 * ties) / chosen.size()[0].max(1) as f64
}

/// The mean loss of training pairs `idx` (stage 1: Bradley–Terry; stage 2: eq. (8) with the
/// given noise `eps` for the chosen and rejected sides), their accuracy, and stage 2's mean
/// assigned σ.
fn pair_loss(
    model: &RewardModel,
    train: &[EncodedPair],
    idx: &[usize],
    stage: &Stage,
    eps: Option<(Tensor, Tensor)>,
    alpha: f64,
    pad_id: i64,
) -> Result<(Tensor, f64, Option<f64>)> {
    let refs: Vec<&EncodedPair> = idx.iter().map(|&i| &train[i]).collect();
    let (mu_c, sig_c, mu_r, sig_r) = forward_pairs(model, &refs, pad_id)?;
    Ok(match stage {
        Stage::One => {
            let (rc, rr) = (mu_c.select(1, 0), mu_r.select(1, 0));
            (bradley_terry(&rc, &rr), accuracy(&rc, &rr), None)
        }
        Stage::Two {
            p_train,
            bootstrap: Some(weights),
            heads,
            ..
        } => {
            let (eps_c, eps_r) =
                eps.ok_or_else(|| TrainError::Invalid("stage 2 needs the batch's noise".into()))?;
            let device = mu_c.device();
            let k = *heads as usize;
            let p: Vec<f32> = idx.iter().map(|&i| p_train[i]).collect();
            let w: Vec<f32> = idx
                .iter()
                .flat_map(|&i| weights[i * k..(i + 1) * k].iter().copied())
                .collect();
            let p = Tensor::from_slice(&p).to_device(device).unsqueeze(1);
            let w = Tensor::from_slice(&w)
                .to_device(device)
                .view([idx.len() as i64, *heads]);
            let loss = bootstrap_mse(
                (&mu_c, &sig_c, &eps_c),
                (&mu_r, &sig_r, &eps_r),
                &p,
                &w,
                alpha,
            );
            let used = w.sum(Kind::Float).double_value(&[]).max(1.0);
            let sigma = ((&sig_c + &sig_r) * 0.5 * &w)
                .sum(Kind::Float)
                .double_value(&[])
                / used;
            (
                loss,
                accuracy(&nominal(&mu_c, &sig_c), &nominal(&mu_r, &sig_r)),
                Some(sigma),
            )
        }
        Stage::Two {
            p_train,
            assignment,
            ..
        } => {
            let (eps_c, eps_r) =
                eps.ok_or_else(|| TrainError::Invalid("stage 2 needs the batch's noise".into()))?;
            let device = mu_c.device();
            let p: Vec<f32> = idx.iter().map(|&i| p_train[i]).collect();
            let h: Vec<i64> = idx.iter().map(|&i| assignment[i]).collect();
            let p = Tensor::from_slice(&p).to_device(device);
            let h = Tensor::from_slice(&h).to_device(device).unsqueeze(1);
            let pick = |t: &Tensor| t.gather(1, &h, false).squeeze_dim(1);
            let (sc, sr) = (pick(&sig_c), pick(&sig_r));
            let loss = brme_mse(
                &pick(&mu_c),
                &sc,
                &pick(&mu_r),
                &sr,
                &p,
                alpha,
                &eps_c,
                &eps_r,
            );
            let sigma = ((&sc + &sr) * 0.5).mean(Kind::Float).double_value(&[]);
            (
                loss,
                accuracy(&nominal(&mu_c, &sig_c), &nominal(&mu_r, &sig_r)),
                Some(sigma),
            )
        }
    })
}

/// μ of the smallest-σ head per row.
fn nominal(mu: &Tensor, sigma: &Tensor) -> Tensor {
    mu.gather(1, &sigma.argmin(1, true), false).squeeze_dim(1)
}

/// Loss and accuracies on `pairs`; stage 2 evaluates eq. (8) at ε = 0 against `p_hat`.
fn validate(
    model: &RewardModel,
    pairs: &[EncodedPair],
    p_hat: Option<&[f32]>,
    heads_of: Option<&[i64]>,
    cfg: &RmConfig,
    pad_id: i64,
) -> Result<Validation> {
    let _guard = tch::no_grad_guard();
    let (mut loss, mut acc, mut mean_acc, mut n) = (0.0, 0.0, 0.0, 0.0);
    for (c, chunk) in pairs.chunks(cfg.batch_size).enumerate() {
        let refs: Vec<&EncodedPair> = chunk.iter().collect();
        let (mu_c, sig_c, mu_r, sig_r) = forward_pairs(model, &refs, pad_id)?;
        let m = chunk.len() as f64;
        let batch_loss = match (p_hat, heads_of) {
            (Some(p), Some(h)) => {
                let range = c * cfg.batch_size..c * cfg.batch_size + chunk.len();
                let p = Tensor::from_slice(&p[range.clone()]).to_device(mu_c.device());
                let idx = Tensor::from_slice(&h[range])
                    .to_device(mu_c.device())
                    .unsqueeze(1);
                let pick = |t: &Tensor| t.gather(1, &idx, false).squeeze_dim(1);
                let zero = p.zeros_like();
                brme_mse(
                    &pick(&mu_c),
                    &pick(&sig_c),
                    &pick(&mu_r),
                    &pick(&sig_r),
                    &p,
                    cfg.alpha,
                    &zero,
                    &zero,
                )
            }
            _ => bradley_terry(&mu_c.select(1, 0), &mu_r.select(1, 0)),
        };
        loss += batch_loss.double_value(&[]) * m;
        acc += accuracy(&nominal(&mu_c, &sig_c), &nominal(&mu_r, &sig_r)) * m;
        mean_acc += accuracy(
            &mu_c.mean_dim(1, false, Kind::Float),
            &mu_r.mean_dim(1, false, Kind::Float),
        ) * m;
        n += m;
    }
    Ok(Validation {
        loss: loss / n,
        accuracy: acc / n,
        mean_accuracy: mean_acc / n,
    })
}

/// Stage 1: trains a Bradley–Terry RM from the SFT model at `base` and saves it to `out`.
pub fn train_stage1(
    base: &Path,
    tok: &TextTokenizer,
    data: &Path,
    pairs: Vec<PreferencePair>,
    cfg: &RmConfig,
    placement: Placement,
    out: &Path,
) -> Result<RmOutcome> {
    cfg.validate()?;
    let mut meta = RewardMeta::bradley_terry(Some(base.display().to_string()));
    meta.split = Some(cfg.split_record(data));
    tch::manual_seed(cfg.seed as i64);
    let mut model = RewardModel::from_base(base, meta, placement)?;
    model.backbone.activation_checkpointing = cfg.activation_checkpointing;
    let (train, val) = prepare(tok, pairs, cfg, &model)?;
    run(Stage::One, &model, tok, &train, &val, cfg, out)
}

/// Stage 2: trains a K-head BRME on the backbone of the stage-1 RM at `stage1` and saves it.
pub fn train_stage2(
    stage1: &Path,
    tok: &TextTokenizer,
    data: &Path,
    pairs: Vec<PreferencePair>,
    cfg: &RmConfig,
    placement: Placement,
    out: &Path,
) -> Result<RmOutcome> {
    cfg.validate()?;
    let prior = RewardModel::from_dir(stage1, placement)?;
    if prior.meta.kind != RewardKind::BradleyTerry {
        return Err(TrainError::Invalid(format!(
            "{} is not a stage-1 (Bradley–Terry) reward model",
            stage1.display()
        )));
    }
    let mut meta = RewardMeta::brme(cfg.heads, cfg.alpha, Some(stage1.display().to_string()))?
        .with_towers(cfg.diversity.tower_layers);
    meta.split = Some(cfg.split_record(data));
    tch::manual_seed(cfg.seed as i64);
    let mut model = RewardModel::from_base(stage1, meta, placement)?;
    model.backbone.activation_checkpointing = cfg.activation_checkpointing;
    perturb_towers(&model, cfg.diversity.tower_init_noise, cfg.seed);
    tch::manual_seed(cfg.seed as i64);
    let (train, val) = prepare(tok, pairs, cfg, &model)?;
    let p_train = preference_probs(&prior, &train, cfg.batch_size, tok.pad_id)?;
    let p_val = preference_probs(&prior, &val, cfg.batch_size, tok.pad_id)?;
    drop(prior);
    let assignment = assign_heads(train.len(), cfg.heads, cfg.seed);
    let val_heads = assign_heads(val.len(), cfg.heads, cfg.seed ^ 1);
    let bootstrap = (cfg.diversity.data == HeadData::Bootstrap)
        .then(|| bootstrap_weights(train.len(), cfg.heads, cfg.seed));
    std::fs::create_dir_all(out).map_err(|err| TrainError::Io {
        path: out.to_path_buf(),
        err,
    })?;
    let record = serde_json::json!({
        "heads": cfg.heads, "seed": cfg.seed, "train_pairs": train.len(),
        "order": "training pairs in file order after the held-out split (seed, eval_fraction)",
        "eval_fraction": cfg.eval_fraction, "head_data": cfg.diversity.data,
        "tower_layers": cfg.diversity.tower_layers,
        "tower_init_noise": cfg.diversity.tower_init_noise,
        "assignment": if bootstrap.is_some() { serde_json::Value::Null } else { serde_json::json!(assignment) },
        "bootstrap_counts": bootstrap.as_ref().map(|w| w.chunks(cfg.heads as usize).map(|r| r.iter().map(|&c| c as u32).collect::<Vec<_>>()).collect::<Vec<_>>()),
    });
    rrlhf_model::fsio::write_atomic(
        &out.join(ASSIGNMENT_FILE),
        serde_json::to_string(&record).expect("JSON").as_bytes(),
    )?;
    let stage = Stage::Two {
        p_train,
        p_val,
        assignment,
        val_heads,
        bootstrap,
        heads: cfg.heads,
    };
    run(stage, &model, tok, &train, &val, cfg, out)
}

/// Balanced random assignment: a seeded shuffle of the pairs dealt round-robin to K heads.
pub fn assign_heads(n: usize, heads: i64, seed: u64) -> Vec<i64> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = crate::sampler::Order::new(n, seed);
    for slot in order.iter_mut() {
        *slot = rng.next();
    }
    let mut out = vec![0i64; n];
    for (rank, &pair) in order.iter().enumerate() {
        out[pair] = rank as i64 % heads;
    }
    out
}

/// `p̂ = σ(r₁⁺ − r₁⁻)` of the frozen stage-1 model for every pair.
fn preference_probs(
    prior: &RewardModel,
    pairs: &[EncodedPair],
    batch_size: usize,
    pad_id: i64,
) -> Result<Vec<f32>> {
    let _guard = tch::no_grad_guard();
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(batch_size) {
        let refs: Vec<&EncodedPair> = chunk.iter().collect();
        let (mu_c, _, mu_r, _) = forward_pairs(prior, &refs, pad_id)?;
        let p = (mu_c.select(1, 0) - mu_r.select(1, 0)).sigmoid();
        out.extend(Vec::<f32>::try_from(p.to_device(tch::Device::Cpu))?);
    }
    Ok(out)
}

fn prepare(
    tok: &TextTokenizer,
    pairs: Vec<PreferencePair>,
    cfg: &RmConfig,
    model: &RewardModel,
) -> Result<(Vec<EncodedPair>, Vec<EncodedPair>)> {
    if tok.vocab_size() as i64 > model.cfg.vocab_size {
        return Err(TrainError::Invalid(format!(
            "the tokenizer has {} tokens but the model's vocabulary has {}: they do not belong together",
            tok.vocab_size(),
            model.cfg.vocab_size
        )));
    }
    let (train, val) = split_pairs(pairs, cfg.seed, cfg.eval_fraction);
    if train.is_empty() || val.is_empty() {
        return Err(TrainError::Invalid(format!(
            "need pairs to train and validate on, got {} and {}",
            train.len(),
            val.len()
        )));
    }
    Ok((
        encode_pairs(tok, &train, cfg.max_len)?,
        encode_pairs(tok, &val, cfg.max_len)?,
    ))
}

enum Stage {
    One,
    Two {
        p_train: Vec<f32>,
        p_val: Vec<f32>,
        assignment: Vec<i64>,
        val_heads: Vec<i64>,
        /// Bootstrap mode: per-pair, per-head draw counts `[n, K]` (replaces `assignment`).
        bootstrap: Option<Vec<f32>>,
        heads: i64,
    },
}

fn run(
    stage: Stage,
    model: &RewardModel,
    tok: &TextTokenizer,
    train: &[EncodedPair],
    val: &[EncodedPair],
    cfg: &RmConfig,
    out: &Path,
) -> Result<RmOutcome> {
    let start = std::time::Instant::now();
    let steps = cfg.total_steps(train.len());
    let (p_val, val_heads) = match &stage {
        Stage::Two {
            p_val, val_heads, ..
        } => (Some(p_val.as_slice()), Some(val_heads.as_slice())),
        Stage::One => (None, None),
    };
    let initial = validate(model, val, p_val, val_heads, cfg, tok.pad_id)?;
    let sigma_before = assigned_sigma(model, train, &stage, cfg, tok.pad_id)?;
    let schedule = WarmupCosine {
        peak: cfg.lr,
        warmup: cfg.warmup_steps.min(steps / 2),
        total: steps,
        min_ratio: 0.1,
    };
    let mut opt = AdamW::new(&model.vs, cfg.weight_decay)?;
    std::fs::create_dir_all(out).map_err(|err| TrainError::Io {
        path: out.to_path_buf(),
        err,
    })?;
    let mut log = StepLogger::create(&out.join("train_log.jsonl"))?;
    let stage_no = if matches!(stage, Stage::One) { 1 } else { 2 };
    let bar = progress_bar(&format!("rm stage {stage_no}"), steps, cfg.show_progress);
    let mut order = crate::sampler::Order::new(train.len(), cfg.seed);
    let mut last_val = initial;
    for step in 0..steps {
        let idx: Vec<usize> = (0..cfg.batch_size.min(train.len()))
            .map(|_| order.next())
            .collect();
        // Stage 2's noise is drawn for the whole batch at once, so micro-batches see the same
        // draws as one pass would.
        let noise = match &stage {
            Stage::One => None,
            Stage::Two {
                bootstrap, heads, ..
            } => {
                let like = (Kind::Float, model.vs.device());
                let n = idx.len() as i64;
                // Bootstrap trains every head on a pair: one draw per pair and head.
                let shape = if bootstrap.is_some() {
                    vec![n, *heads]
                } else {
                    vec![n]
                };
                Some((
                    Tensor::randn(shape.as_slice(), like),
                    Tensor::randn(shape.as_slice(), like),
                ))
            }
        };
        // Each micro-batch's pair-summed loss, then the gradients divided by the batch's
        // pairs: the gradient of the batch's mean loss.
        let micro = if cfg.micro_batch_size == 0 {
            idx.len()
        } else {
            cfg.micro_batch_size
        };
        opt.zero_grad()?;
        let (mut loss_sum, mut acc_sum, mut sigma_sum) = (0.0, 0.0, None::<f64>);
        for (c, chunk) in idx.chunks(micro).enumerate() {
            let (first, k) = ((c * micro) as i64, chunk.len() as i64);
            let eps = noise
                .as_ref()
                .map(|(ec, er)| (ec.narrow(0, first, k), er.narrow(0, first, k)));
            let (loss, acc, sigma) =
                pair_loss(model, train, chunk, &stage, eps, cfg.alpha, tok.pad_id)?;
            let weight = chunk.len() as f64;
            opt.accumulate(&loss.f_mul_scalar(weight)?)?;
            loss_sum += loss.double_value(&[]) * weight;
            acc_sum += acc * weight;
            sigma_sum = sigma.map(|s| sigma_sum.unwrap_or(0.0) + s * weight);
        }
        let pairs = idx.len().max(1) as f64;
        let (acc, sigma) = (acc_sum / pairs, sigma_sum.map(|s| s / pairs));
        opt.scale_gradients(1.0 / pairs)?;
        let lr = schedule.lr(step);
        let grad_norm = opt.apply(lr, cfg.grad_clip)?;
        let loss_v = loss_sum / pairs;
        if !loss_v.is_finite() {
            return Err(TrainError::Invalid(format!(
                "loss became {loss_v} at step {step}; lower the learning rate"
            )));
        }
        let val_now = (cfg.eval_every > 0 && (step + 1) % cfg.eval_every == 0 && step + 1 < steps)
            .then(|| validate(model, val, p_val, val_heads, cfg, tok.pad_id))
            .transpose()?;
        if let Some(v) = val_now {
            last_val = v;
        }
        log.write(&serde_json::json!({
            "step": step + 1, "loss": loss_v, "accuracy": acc, "lr": lr, "grad_norm": grad_norm,
            "assigned_sigma": sigma, "validation": val_now,
        }))?;
        bar.set_message(format!(
            "loss {loss_v:.3} · val acc {:.3}",
            last_val.accuracy
        ));
        bar.inc(1);
    }
    let final_validation = validate(model, val, p_val, val_heads, cfg, tok.pad_id)?;
    let sigma_after = assigned_sigma(model, train, &stage, cfg, tok.pad_id)?;
    bar.finish_with_message(format!(
        "val accuracy {:.3} → {:.3}",
        initial.accuracy, final_validation.accuracy
    ));
    log.finish()?;
    model.save(out)?;
    tok.save_to(out)?;
    Ok(RmOutcome {
        stage: stage_no,
        train_pairs: train.len(),
        validation_pairs: val.len(),
        steps,
        initial_validation: initial,
        final_validation,
        seconds: start.elapsed().as_secs_f64(),
        assigned_sigma: sigma_before.zip(sigma_after),
    })
}

/// Stage 2: mean σ of each training pair's own head (chosen and rejected), over all pairs
/// (bootstrap: over every head's resample).
fn assigned_sigma(
    model: &RewardModel,
    train: &[EncodedPair],
    stage: &Stage,
    cfg: &RmConfig,
    pad_id: i64,
) -> Result<Option<f64>> {
    let Stage::Two {
        assignment,
        bootstrap,
        heads,
        ..
    } = stage
    else {
        return Ok(None);
    };
    let _guard = tch::no_grad_guard();
    let (mut total, mut n) = (0.0, 0.0);
    for (c, chunk) in train.chunks(cfg.batch_size).enumerate() {
        let refs: Vec<&EncodedPair> = chunk.iter().collect();
        let (_, sig_c, _, sig_r) = forward_pairs(model, &refs, pad_id)?;
        let rows = c * cfg.batch_size..c * cfg.batch_size + chunk.len();
        if let Some(weights) = bootstrap {
            // Each head's σ on the pairs its resample drew, as often as it drew them.
            let k = *heads as usize;
            let w = Tensor::from_slice(&weights[rows.start * k..rows.end * k])
                .to_device(sig_c.device())
                .view([chunk.len() as i64, *heads]);
            let s = (&sig_c + &sig_r) * 0.5 * &w;
            total += s.sum(Kind::Float).double_value(&[]);
            n += w.sum(Kind::Float).double_value(&[]);
            continue;
        }
        let h = Tensor::from_slice(&assignment[rows])
            .to_device(sig_c.device())
            .unsqueeze(1);
        let s = (sig_c.gather(1, &h, false) + sig_r.gather(1, &h, false)) * 0.5;
        total += s.sum(Kind::Float).double_value(&[]);
        n += chunk.len() as f64;
    }
    Ok(Some(total / n))
}
