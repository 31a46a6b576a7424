//! Supervised fine-tuning: next-token loss on the response tokens (plus the closing EOS) of
//! prompt/response examples, or on whole texts when the prompt is empty. AdamW with linear
//! warm-up and cosine decay, global-norm clipping, a held-out split whose loss is measured
//! before, during and after training, a progress bar, and a JSONL log of every step.

use std::path::Path;

use rrlhf_data::{SftData, split};
use rrlhf_model::losses::nll;
use rrlhf_model::{Batch, CausalLm, PadSide, TextTokenizer};
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::error::{Result, TrainError};
use crate::optim::AdamW;
use crate::progress::{StepLogger, progress_bar};
use crate::sampler::Order;
use crate::schedule::WarmupCosine;

#[derive(Debug, Clone)]
pub struct SftConfig {
    pub steps: usize,
    pub batch_size: usize,
    /// Examples per forward/backward pass (0: the whole batch); the micro-batches' gradients
    /// are accumulated, token-weighted, into the batch's update. Bounds activation memory.
    pub micro_batch_size: usize,
    pub lr: f64,
    pub warmup_steps: usize,
    /// Final learning rate as a fraction of `lr`.
    pub min_lr_ratio: f64,
    pub weight_decay: f64,
    /// Global gradient-norm limit; 0 disables clipping.
    pub grad_clip: f64,
    /// Longest sequence in tokens; longer examples keep the prompt's tail and response's head.
    pub max_len: usize,
    /// Share of examples held out for the evaluation loss.
    pub eval_fraction: f64,
    /// Cap on held-out examples evaluated (keeps evaluation cheap on big sets).
    pub max_eval_examples: usize,
    /// Evaluate every N steps (0: only before and after).
    pub eval_every: usize,
    pub seed: u64,
    pub show_progress: bool,
}

impl Default for SftConfig {
    fn default() -> Self {
        Self {
            steps: 200,
            batch_size: 8,
            micro_batch_size: 0,
            lr: 1e-3,
            warmup_steps: 20,
            min_lr_ratio: 0.1,
            weight_decay: 0.01,
            grad_clip: 1.0,
            max_len: 256,
            eval_fraction: 0.05,
            max_eval_examples: 128,
            eval_every: 0,
            seed: 0,
            show_progress: true,
        }
    }
}

impl SftConfig {
    fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(TrainError::Invalid(m.into()));
        if self.steps == 0 {
            return bad("steps must be ≥ 1");
        }
        if self.batch_size == 0 {
            return bad("batch size must be ≥ 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("learning rate must be > 0");
        }
        if self.max_len < 2 {
            return bad("max length must be ≥ 2 tokens");
        }
        if !(self.eval_fraction > 0.0 && self.eval_fraction < 1.0) {
            return bad("eval fraction must be in (0, 1)");
        }
        Ok(())
    }
}

/// One tokenised example: ids and, per id, whether it is a training target.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub ids: Vec<i64>,
    pub target: Vec<bool>,
}

/// Tokenises prompt + response + EOS, truncating to `max_len` (the prompt keeps its last half
/// of the budget at most, the response its head). `None` when nothing is left to train on.
pub fn encode(
    tok: &TextTokenizer,
    prompt: &str,
    response: &str,
    max_len: usize,
) -> Result<Option<Encoded>> {
    let (ids, prompt_len, _) = tok.encode_pair_split(prompt, response, max_len)?;
    let mut target: Vec<bool> = (0..ids.len()).map(|i| i >= prompt_len).collect();
    // A whole-text example trains on every token after the first (which has no context).
    if prompt_len == 0 {
        target[0] = false;
    }
    Ok(target.iter().any(|&t| t).then_some(Encoded { ids, target }))
}

/// Right-padded model batch plus the `[B, T-1]` mask of target positions in shifted order.
fn collate(examples: &[&Encoded], pad_id: i64, device: tch::Device) -> Result<(Batch, Tensor)> {
    let seqs: Vec<Vec<i64>> = examples.iter().map(|e| e.ids.clone()).collect();
    let batch = Batch::pad(&seqs, pad_id, PadSide::Right, device)?;
    let width = batch.width() as usize;
    let mut mask = Vec::with_capacity(examples.len() * width);
    for e in examples {
        mask.extend(e.target.iter().map(|&t| if t { 1f32 } else { 0.0 }));
        mask.extend(std::iter::repeat_n(0f32, width - e.target.len()));
    }
    let mask = Tensor::from_slice(&mask)
        .view([examples.len() as i64, width as i64])
        .to_device(device);
    let shifted = mask.narrow(1, 1, width as i64 - 1);
    Ok((batch, shifted))
}

/// Token-weighted mean NLL over `examples`.
pub fn eval_loss(
    model: &CausalLm,
    examples: &[Encoded],
    pad_id: i64,
    batch_size: usize,
) -> Result<f64> {
    let _guard = tch::no_grad_guard();
    let (mut total, mut count) = (0.0, 0.0);
    for chunk in examples.chunks(batch_size.max(1)) {
        let refs: Vec<&Encoded> = chunk.iter().collect();
        let (batch, mask) = collate(&refs, pad_id, model.device())?;
        let lp = model.token_logprobs(&batch);
        total -= (lp * &mask).sum(Kind::Float).double_value(&[]);
        count += mask.sum(Kind::Float).double_value(&[]);
    }
    Ok(if count > 0.0 { total / count } else { f64::NAN })
}

#[derive(Debug, Clone, Serialize)]
struct StepLog {
    step: usize,
    loss: f64,
    lr: f64,
    grad_norm: f64,
    tokens: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_loss: Option<f64>,
}

/// What an SFT run did.
#[derive(Debug, Clone, Serialize)]
pub struct SftOutcome {
    pub train_examples: usize,
    pub eval_examples: usize,
    pub skipped_examples: usize,
    pub steps: usize,
    pub target_tokens: usize,
    pub initial_eval_loss: f64,
    pub final_eval_loss: f64,
    pub final_train_loss: f64,
    pub seconds: f64,
}

/// Backpropagates the batch's token-mean loss in micro-batches of `micro` examples (0: all at
/// once): each micro-batch's token-summed loss, then the gradients divided by the batch's
/// target tokens — the gradient of the whole batch's mean. Returns that mean and the tokens.
fn accumulate(
    model: &CausalLm,
    picked: &[&Encoded],
    pad_id: i64,
    micro: usize,
    opt: &mut AdamW,
) -> Result<(f64, usize)> {
    let micro = if micro == 0 { picked.len() } else { micro };
    opt.zero_grad()?;
    let (mut loss_sum, mut tokens) = (0.0, 0.0);
    for chunk in picked.chunks(micro) {
        let (batch, mask) = collate(chunk, pad_id, model.device())?;
        let n = mask.sum(Kind::Float).double_value(&[]);
        let loss = nll(&model.token_logprobs(&batch), &mask);
        opt.accumulate(&loss.f_mul_scalar(n)?)?;
        loss_sum += loss.double_value(&[]) * n;
        tokens += n;
    }
    opt.scale_gradients(1.0 / tokens.max(1.0))?;
    Ok((loss_sum / tokens.max(1.0), tokens as usize))
}

/// Fine-tunes `model` in place on `data`; writes one JSON line per step to `log` if given.
pub fn train(
    model: &CausalLm,
    tok: &TextTokenizer,
    data: &SftData,
    cfg: &SftConfig,
    log: Option<&Path>,
) -> Result<SftOutcome> {
    cfg.validate()?;
    let start = std::time::Instant::now();
    let mut encoded = Vec::with_capacity(data.examples.len());
    let mut skipped = data.skipped;
    for ex in &data.examples {
        match encode(tok, &ex.prompt, &ex.response, cfg.max_len)? {
            Some(e) => encoded.push(e),
            None => skipped += 1,
        }
    }
    let vocab = model.cfg.vocab_size;
    if let Some(bad) = encoded.iter().flat_map(|e| &e.ids).find(|&&t| t >= vocab) {
        return Err(TrainError::Invalid(format!(
            "the tokenizer produced id {bad} but the model's vocabulary has {vocab} entries: \
             model and tokenizer do not match"
        )));
    }
    let (train_set, mut eval_set) = split::train_test(encoded, cfg.seed, cfg.eval_fraction);
    eval_set.truncate(cfg.max_eval_examples);
    if train_set.is_empty() || eval_set.is_empty() {
        return Err(TrainError::Invalid(format!(
            "need examples for both training and evaluation, got {} and {}",
            train_set.len(),
            eval_set.len()
        )));
    }

    let mut log_file = log.map(StepLogger::create).transpose()?;
    let schedule = WarmupCosine {
        peak: cfg.lr,
        warmup: cfg.warmup_steps.min(cfg.steps / 2),
        total: cfg.steps,
        min_ratio: cfg.min_lr_ratio,
    };
    let mut opt = AdamW::new(&model.vs, cfg.weight_decay)?;
    let initial_eval_loss = eval_loss(model, &eval_set, tok.pad_id, cfg.batch_size)?;
    let bar = progress_bar("sft", cfg.steps, cfg.show_progress);
    bar.set_message(format!("held-out loss {initial_eval_loss:.3}"));

    let mut order = Order::new(train_set.len(), cfg.seed);
    let (mut target_tokens, mut last_loss, mut last_eval) = (0usize, f64::NAN, initial_eval_loss);
    for step in 0..cfg.steps {
        let picked: Vec<&Encoded> = (0..cfg.batch_size)
            .map(|_| &train_set[order.next()])
            .collect();
        let (loss, tokens) =
            accumulate(model, &picked, tok.pad_id, cfg.micro_batch_size, &mut opt)?;
        let lr = schedule.lr(step);
        let grad_norm = opt.apply(lr, cfg.grad_clip)?;
        last_loss = loss;
        if !last_loss.is_finite() {
            return Err(TrainError::Invalid(format!(
                "loss became {last_loss} at step {step}; lower the learning rate"
            )));
        }
        target_tokens += tokens;
        let eval = (cfg.eval_every > 0 && (step + 1) % cfg.eval_every == 0 && step + 1 < cfg.steps)
            .then(|| eval_loss(model, &eval_set, tok.pad_id, cfg.batch_size))
            .transpose()?;
        if let Some(e) = eval {
            last_eval = e;
        }
        if let Some(f) = log_file.as_mut() {
            f.write(&StepLog {
                step: step + 1,
                loss: last_loss,
                lr,
                grad_norm,
                tokens,
                eval_loss: eval,
            })?;
        }
        bar.set_message(format!("loss {last_loss:.3} · held-out {last_eval:.3}"));
        bar.inc(1);
    }
    let final_eval_loss = eval_loss(model, &eval_set, tok.pad_id, cfg.batch_size)?;
    bar.finish_with_message(format!(
        "held-out loss {initial_eval_loss:.3} → {final_eval_loss:.3}"
    ));
    if let Some(f) = log_file {
        f.finish()?;
    }
    Ok(SftOutcome {
        train_examples: train_set.len(),
        eval_examples: eval_set.len(),
        skipped_examples: skipped,
        steps: cfg.steps,
        target_tokens,
        initial_eval_loss,
        final_eval_loss,
        final_train_loss: last_loss,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> (tempfile::TempDir, TextTokenizer) {
        let dir = tempfile::tempdir().unwrap();
        let texts = (0..50).map(|i| format!("Human: question {i}\n\nAssistant: answer {i}"));
        let tok = rrlhf_model::tokenizer::train_bpe(texts, 300, dir.path()).unwrap();
        (dir, tok)
    }

    #[test]
    fn targets_cover_the_response_and_eos_only() {
        let (_d, tok) = tokenizer();
        let e = encode(&tok, "Human: hi\n\nAssistant:", " hello there", 64)
            .unwrap()
            .unwrap();
        let p = tok.encode("Human: hi\n\nAssistant:").unwrap().len();
        assert!(e.target[..p].iter().all(|&t| !t));
        assert!(e.target[p..].iter().all(|&t| t));
        assert_eq!(*e.ids.last().unwrap(), tok.eos_id);
        // Whole-text examples train on everything but the first token.
        let w = encode(&tok, "", "answer 3", 64).unwrap().unwrap();
        assert!(!w.target[0] && w.target[1..].iter().all(|&t| t));
    }

    #[test]
    fn truncation_keeps_prompt_tail_and_response_head() {
        let (_d, tok) = tokenizer();
        let prompt = "question ".repeat(40);
        let response = " answer".repeat(40);
        let e = encode(&tok, &prompt, &response, 20).unwrap().unwrap();
        assert_eq!(e.ids.len(), 20);
        assert_eq!(e.target.iter().filter(|&&t| !t).count(), 10);
        let full_p = tok.encode(&prompt).unwrap();
        assert_eq!(e.ids[..10], full_p[full_p.len() - 10..]);
        let full_r = tok.encode(&response).unwrap();
        assert_eq!(
            e.ids[10..],
            full_r[..10],
            "EOS is cut with the response tail"
        );
    }

    #[test]
    fn bad_settings_are_rejected() {
        let (_d, tok) = tokenizer();
        let model = {
            let preset = rrlhf_model::SizePreset::by_name("tiny").unwrap();
            let cfg = rrlhf_model::ModelConfig::new_random(
                rrlhf_model::Arch::Llama,
                &preset,
                300,
                None,
                1,
                Some(0),
                64,
            );
            CausalLm::new(cfg, Default::default()).unwrap()
        };
        let data = SftData {
            examples: vec![rrlhf_data::SftExample {
                prompt: "a".into(),
                response: "b".into(),
            }],
            skipped: 0,
        };
        for cfg in [
            SftConfig {
                steps: 0,
                ..Default::default()
            },
            SftConfig {
                lr: -1.0,
                ..Default::default()
            },
            SftConfig {
                eval_fraction: 1.5,
                ..Default::default()
            },
        ] {
            assert!(matches!(
                train(&model, &tok, &data, &cfg, None),
                Err(TrainError::Invalid(_))
            ));
        }
        // One example cannot be split into training and held-out parts.
        let err = train(
            &model,
            &tok,
            &data,
            &SftConfig {
                show_progress: false,
                ..Default::default()
            },
            None,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("both training and evaluation"),
            "{err}"
        );
    }

    #[test]
    fn micro_batches_give_the_same_updates() {
        tch::set_num_threads(1);
        let (_d, tok) = tokenizer();
        let data = SftData {
            examples: (0..40)
                .map(|i| rrlhf_data::SftExample {
                    prompt: format!("Human: question {i}\n\nAssistant:"),
                    response: format!(" answer {}", "and more ".repeat(i % 5)),
                })
                .collect(),
            skipped: 0,
        };
        // One random start, saved, so every run loads the same weights (tests running in
        // parallel share libtorch's global generator).
        let start = tempfile::tempdir().unwrap();
        let preset = rrlhf_model::SizePreset::by_name("tiny").unwrap();
        let config = rrlhf_model::ModelConfig::new_random(
            rrlhf_model::Arch::Llama,
            &preset,
            300,
            None,
            tok.eos_id,
            Some(tok.pad_id),
            64,
        );
        CausalLm::new(config, Default::default())
            .unwrap()
            .save(start.path())
            .unwrap();
        let trained = |micro: usize| {
            let model = CausalLm::from_dir(start.path(), Default::default()).unwrap();
            let cfg = SftConfig {
                steps: 3,
                batch_size: 4,
                micro_batch_size: micro,
                warmup_steps: 0,
                show_progress: false,
                ..Default::default()
            };
            let outcome = train(&model, &tok, &data, &cfg, None).unwrap();
            let w = model.vs.variables()["model.layers.0.mlp.down_proj.weight"].copy();
            (outcome, w)
        };
        let (whole, reference) = trained(0);
        for micro in [1, 2, 4] {
            let (outcome, w) = trained(micro);
            let diff = (&w - &reference).abs().max().double_value(&[]);
            assert!(
                diff < 1e-5,
                "micro-batches of {micro}: weights differ by {diff}"
            );
            assert!((outcome.final_eval_loss - whole.final_eval_loss).abs() < 1e-5);
            assert_eq!(outcome.target_tokens, whole.target_tokens);
        }
    }
}
