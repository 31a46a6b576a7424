//! Request validation and conversion for the critic service: every field a request carries is
//! checked here (INVALID_ARGUMENT naming the field) before the engine sees it, so one bad
//! request can never fail a merged batch.

use rrlhf_proto::critic::v1::{TrainRequest, TrainResponse, TrainSample};
use rrlhf_runtime::validate::{MAX_EPOCHS, SampleParts, invalid, train_samples};
use rrlhf_train::data_parallel::UpdatePlan;
use tonic::Status;

use crate::engine::{TrainJob, TrainStats};
use crate::service::CriticServer;

impl CriticServer {
    /// A `Train` request checked field by field (INVALID_ARGUMENT naming the first bad one).
    pub(crate) fn value_job(&self, req: &TrainRequest) -> Result<TrainJob, Status> {
        // A data-parallel rank may get no samples (it still takes part in every update).
        if req.samples.is_empty() && !self.cfg.is_grouped() {
            return Err(invalid("samples", "at least one sample is required"));
        }
        if !(req.lr > 0.0 && req.lr <= 1.0) {
            return Err(invalid("lr", format!("must be in (0, 1], got {}", req.lr)));
        }
        if req.epochs > MAX_EPOCHS {
            return Err(invalid(
                "epochs",
                format!("must be ≤ {MAX_EPOCHS}, got {}", req.epochs),
            ));
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
        let pairs = train_samples(&req.samples, parts, self.vocab_size, self.cfg.max_length)?;
        let each = |f: fn(&TrainSample) -> &Vec<f32>| req.samples.iter().map(f).cloned().collect();
        let plan = UpdatePlan::of_request(
            (req.minibatch_size, req.micro_batch_size),
            req.epochs,
            req.lr,
            req.max_grad_norm,
            req.seed,
        );
        Ok(TrainJob {
            pairs,
            old_values: each(|s| &s.old_values),
            returns: each(|s| &s.returns),
            value_clip: (req.value_clip > 0.0).then_some(req.value_clip as f64),
            plan,
        })
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

/// A training sample's sequence and per-token targets, for validation.
fn parts(s: &TrainSample) -> SampleParts<'_> {
    let targets = [
        ("old_values", s.old_values.as_slice()),
        ("returns", s.returns.as_slice()),
    ];
    (s.sequence.as_ref(), targets)
}
