//! Request validation and conversion for the actor service: every field a request carries is
//! checked here (INVALID_ARGUMENT naming the field) before the engine sees it, and engine
//! results become proto messages.

use rrlhf_model::SamplingParams;
use rrlhf_model::generate::FinishReason;
use rrlhf_proto::actor::v1::{
    GenerateRequest, GeneratedSample, Prompt, TrainRequest, TrainResponse, TrainSample,
};
use rrlhf_runtime::validate::{MAX_EPOCHS, SampleParts, invalid, train_samples};
use rrlhf_train::data_parallel::UpdatePlan;
use tonic::Status;

use crate::engine::{PpoJob, PpoStats, Sampled};
use crate::service::ActorServer;

impl ActorServer {
    /// The ids of prompt `i`: its own, or its text through the actor's tokenizer (keeping the
    /// last tokens when it is too long); validated against the vocabulary and length limit.
    pub(crate) fn prompt_ids(
        &self,
        i: usize,
        p: &Prompt,
        max_new_tokens: usize,
    ) -> Result<Vec<i64>, Status> {
        let room = self.cfg.max_length.saturating_sub(max_new_tokens);
        if p.prompt_ids.is_empty() {
            if p.text.is_empty() {
                return Err(invalid(format!("prompts[{i}]"), "needs prompt_ids or text"));
            }
            let tok = self.text_tokenizer.as_ref().ok_or_else(|| {
                invalid(
                    format!("prompts[{i}].text"),
                    "this actor has no tokenizer; send prompt_ids",
                )
            })?;
            let mut ids = tok
                .encode(&p.text)
                .map_err(|e| invalid(format!("prompts[{i}].text"), e.to_string()))?;
            if ids.is_empty() {
                return Err(invalid(
                    format!("prompts[{i}].text"),
                    "tokenizes to nothing",
                ));
            }
            if room == 0 {
                return Err(invalid(
                    "sampling.max_new_tokens",
                    format!(
                        "leaves no room for a prompt in max_length {}",
                        self.cfg.max_length
                    ),
                ));
            }
            ids.drain(..ids.len().saturating_sub(room));
            return Ok(ids);
        }
        let field = format!("prompts[{i}].prompt_ids");
        if let Some(t) = p
            .prompt_ids
            .iter()
            .find(|&&t| t < 0 || t >= self.vocab_size)
        {
            return Err(invalid(
                field,
                format!("id {t} is outside [0, {})", self.vocab_size),
            ));
        }
        if p.prompt_ids.len() > room {
            return Err(invalid(
                format!("prompts[{i}]"),
                format!(
                    "prompt + max_new_tokens exceed max_length {}",
                    self.cfg.max_length
                ),
            ));
        }
        Ok(p.prompt_ids.clone())
    }

    /// A `Train` request checked field by field (INVALID_ARGUMENT naming the first bad one).
    pub(crate) fn ppo_job(&self, req: TrainRequest) -> Result<PpoJob, Status> {
        // A data-parallel rank may get no samples (it still takes part in every update).
        if req.samples.is_empty() && !self.cfg.is_grouped() {
            return Err(invalid("samples", "at least one sample is required"));
        }
        for (name, value, ok) in [
            ("lr", req.lr, req.lr > 0.0 && req.lr <= 1.0),
            (
                "clip_eps",
                req.clip_eps,
                req.clip_eps.is_finite() && req.clip_eps > 0.0,
            ),
            (
                "entropy_coef",
                req.entropy_coef,
                req.entropy_coef.is_finite() && req.entropy_coef >= 0.0,
            ),
            (
                "max_grad_norm",
                req.max_grad_norm,
                req.max_grad_norm.is_finite() && req.max_grad_norm >= 0.0,
            ),
        ] {
            if !ok {
                return Err(invalid(name, format!("out of range: {value}")));
            }
        }
        if req.epochs > MAX_EPOCHS {
            return Err(invalid(
                "epochs",
                format!("must be ≤ {MAX_EPOCHS}, got {}", req.epochs),
            ));
        }
        let pairs = train_samples(&req.samples, parts, self.vocab_size, self.cfg.max_length)?;
        let each = |f: fn(&TrainSample) -> &Vec<f32>| req.samples.iter().map(f).cloned().collect();
        Ok(PpoJob {
            pairs,
            old_logprobs: each(|s| &s.old_logprobs),
            advantages: each(|s| &s.advantages),
            clip_eps: req.clip_eps as f64,
            entropy_coef: req.entropy_coef as f64,
            plan: UpdatePlan::of_request(
                (req.minibatch_size, req.micro_batch_size),
                req.epochs,
                req.lr,
                req.max_grad_norm,
                req.seed,
            ),
        })
    }

    pub(crate) fn sampling(&self, req: &GenerateRequest) -> Result<SamplingParams, Status> {
        let s = req.sampling.clone().unwrap_or_default();
        if !(s.temperature.is_finite() && s.temperature >= 0.0) {
            return Err(invalid(
                "sampling.temperature",
                format!("must be ≥ 0, got {}", s.temperature),
            ));
        }
        if !(s.top_p.is_finite() && (0.0..=1.0).contains(&s.top_p)) {
            return Err(invalid(
                "sampling.top_p",
                format!("must be in [0, 1], got {}", s.top_p),
            ));
        }
        if s.max_new_tokens == 0 {
            return Err(invalid("sampling.max_new_tokens", "must be ≥ 1"));
        }
        if s.min_new_tokens > s.max_new_tokens {
            return Err(invalid(
                "sampling.min_new_tokens",
                format!(
                    "must be ≤ max_new_tokens ({}), got {}",
                    s.max_new_tokens, s.min_new_tokens
                ),
            ));
        }
        if let Some(t) = s.stop_ids.iter().find(|&&t| t < 0 || t >= self.vocab_size) {
            return Err(invalid(
                "sampling.stop_ids",
                format!("id {t} is outside [0, {})", self.vocab_size),
            ));
        }
        Ok(SamplingParams {
            temperature: s.temperature as f64,
            top_k: s.top_k as i64,
            top_p: if s.top_p == 0.0 { 1.0 } else { s.top_p as f64 },
            max_new_tokens: s.max_new_tokens as usize,
            min_new_tokens: s.min_new_tokens as usize,
            stop_ids: if s.stop_ids.is_empty() {
                vec![self.eos_id]
            } else {
                s.stop_ids
            },
            seed: s.seed,
        })
    }
}

pub(crate) fn sample_to_proto(
    ids: &[String],
    prompt_ids: &[Vec<i64>],
    s: Sampled,
) -> GeneratedSample {
    GeneratedSample {
        id: ids[s.prompt_index].clone(),
        prompt_ids: prompt_ids[s.prompt_index].clone(),
        prompt_index: s.prompt_index as u32,
        sample_index: s.sample_index as u32,
        token_ids: s.tokens,
        text: s.text,
        logprobs: s.logprobs,
        policy_logprobs: s.policy_logprobs,
        finish_reason: match s.finish {
            FinishReason::Stop => "stop".into(),
            FinishReason::Length => "length".into(),
        },
    }
}

pub(crate) fn train_response(s: PpoStats) -> TrainResponse {
    let u = s.summary;
    TrainResponse {
        policy_loss_first: u.loss_first as f32,
        policy_loss_last: u.loss_last as f32,
        policy_loss_mean: u.loss_mean as f32,
        clip_fraction: s.clip_fraction as f32,
        approx_kl: s.approx_kl as f32,
        entropy: s.entropy as f32,
        updates: u.updates as u32,
        grad_norm_mean: u.grad_norm_mean as f32,
        param_checksum: u.param_checksum,
    }
}

/// A training sample's sequence and per-token targets, for validation.
fn parts(s: &TrainSample) -> SampleParts<'_> {
    let targets = [
        ("old_logprobs", s.old_logprobs.as_slice()),
        ("advantages", s.advantages.as_slice()),
    ];
    (s.sequence.as_ref(), targets)
}
