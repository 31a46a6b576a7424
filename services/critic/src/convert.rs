//! Request validation and conversion for the critic service: every field a request carries is
//! checked here (INVALID_ARGUMENT naming the field) before the engine sees it, so one bad
//! request can never fail a merged batch.

use rrlhf_proto::common::v1::Sequence;
use rrlhf_proto::critic::v1::{TrainRequest, TrainResponse};
use rrlhf_runtime::validate::{invalid, per_token, token_pair};
use rrlhf_train::data_parallel::UpdatePlan;
use tonic::Status;

use crate::engine::{Pair, TrainJob, TrainStats};
use crate::service::CriticServer;

impl CriticServer {
    pub(crate) fn pair(&self, field: &str, s: &Sequence) -> Result<Pair, Status> {
        token_pair(
            field,
            &s.prompt_ids,
            &s.response_ids,
            self.vocab_size,
            self.cfg.max_length,
        )
    }

    /// A `Train` request checked field by field (INVALID_ARGUMENT naming the first bad one).
    pub(crate) fn value_job(&self, req: &TrainRequest) -> Result<TrainJob, Status> {
        // A data-parallel rank may get no samples (it still takes part in every update).
        if req.samples.is_empty() && !self.cfg.is_grouped() {
            return Err(invalid("samples", "at least one sample is required"));
        }
        if !(req.lr.is_finite() && req.lr > 0.0) {
            return Err(invalid("lr", format!("must be > 0, got {}", req.lr)));
        }
        if !(req.value_clip.is_finite() && req.value_clip >= 0.0) {
            return Err(invalid(
                "value_clip",
                format!("must be ≥ 0, got {}", req.value_clip),
            ));
        }
        if !(req.max_grad_norm.is_finite() && req.max_grad_norm >= 0.0) {
            return Err(invalid(
                "max_grad_norm",
                format!("must be ≥ 0, got {}", req.max_grad_norm),
            ));
        }
        let mut job = TrainJob {
            pairs: vec![],
            old_values: vec![],
            returns: vec![],
            value_clip: (req.value_clip > 0.0).then_some(req.value_clip as f64),
            plan: UpdatePlan {
                minibatch_size: req.minibatch_size as usize,
                epochs: req.epochs.max(1) as usize,
                lr: req.lr as f64,
                max_grad_norm: req.max_grad_norm as f64,
                seed: req.seed,
            },
        };
        for (i, s) in req.samples.iter().enumerate() {
            let seq = s
                .sequence
                .as_ref()
                .ok_or_else(|| invalid(format!("samples[{i}].sequence"), "is required"))?;
            let pair = self.pair(&format!("samples[{i}].sequence"), seq)?;
            for (name, v) in [("old_values", &s.old_values), ("returns", &s.returns)] {
                per_token(&format!("samples[{i}].{name}"), v, pair.1.len())?;
            }
            job.pairs.push(pair);
            job.old_values.push(s.old_values.clone());
            job.returns.push(s.returns.clone());
        }
        Ok(job)
    }
}

pub(crate) fn train_response(s: TrainStats) -> TrainResponse {
    TrainResponse {
        loss_first: s.loss_first as f32,
        loss_last: s.loss_last as f32,
        loss_mean: s.loss_mean as f32,
        updates: s.updates as u32,
        grad_norm_mean: s.grad_norm_mean as f32,
        param_checksum: s.param_checksum,
    }
}
