//! The tonic implementation of `rrlhf.critic.v1.CriticService`. Everything a request carries is
//! validated here (INVALID_ARGUMENT naming the field) before the engine sees it, so one bad
//! request can never fail a merged batch.

use std::sync::Arc;

use rrlhf_model::Placement;
use rrlhf_proto::common::v1::{
    LoadCheckpointRequest, LoadCheckpointResponse, RankInfo, SaveCheckpointRequest,
    SaveCheckpointResponse, Sequence,
};
use rrlhf_proto::critic::v1::critic_service_server::{CriticService, CriticServiceServer};
use rrlhf_proto::critic::v1::{
    InfoRequest, InfoResponse, TokenValues, TrainRequest, TrainResponse, ValuesRequest,
    ValuesResponse,
};
use rrlhf_runtime::engine::{Engine, LoadError};
use rrlhf_runtime::validate::{invalid, per_token, token_pair};
use rrlhf_runtime::{checkpoint_rpc, server};
use rrlhf_train::data_parallel::{DataParallel, UpdatePlan};
use tonic::{Request, Response, Status};

use crate::config::CriticServiceConfig;
use crate::model::{Critic, Done, Pair, TrainJob, Work};

#[derive(Clone)]
pub struct CriticServer {
    pub engine: Engine<Work, Done>,
    vocab_size: i64,
    cfg: Arc<CriticServiceConfig>,
}

impl CriticServer {
    pub fn load(cfg: CriticServiceConfig) -> Result<Self, LoadError> {
        let load_cfg = cfg.clone();
        let (engine, vocab_size) = Engine::spawn(
            "critic-engine",
            cfg.engine.batch(),
            move || -> Result<(Critic, i64), LoadError> {
                let err = |e: rrlhf_model::ModelError| LoadError(e.to_string());
                let placement = Placement::parse(&load_cfg.engine.device, &load_cfg.engine.dtype)
                    .map_err(err)?;
                rrlhf_model::device::set_threads(load_cfg.engine.threads);
                let srv = &load_cfg.server;
                let dp = DataParallel::for_service(
                    srv.rank,
                    srv.world_size,
                    srv.store_addr.as_deref(),
                    srv.dist_backend.as_deref(),
                    placement.device,
                    srv.dist_timeout(),
                )
                .map_err(|e| LoadError(format!("data-parallel group: {e}")))?;
                let critic = Critic::load(&load_cfg.model, placement, load_cfg.weight_decay, dp)
                    .map_err(err)?;
                critic
                    .values(&[(vec![0], vec![0])])
                    .map_err(|e| LoadError(format!("warm-up: {e}")))?;
                let vocab = critic.vocab_size();
                Ok((critic, vocab))
            },
            |critic: &Critic, work: &[Work]| critic.run(work).map_err(|e| e.to_string()),
            |w: &Work| match w {
                Work::Values((p, r)) => p.len() + r.len(),
                _ => usize::MAX / 4,
            },
        )?;
        Ok(Self {
            engine,
            vocab_size,
            cfg: Arc::new(cfg),
        })
    }

    fn pair(&self, field: &str, s: &Sequence) -> Result<Pair, Status> {
        token_pair(
            field,
            &s.prompt_ids,
            &s.response_ids,
            self.vocab_size,
            self.cfg.max_length,
        )
    }

    fn train_job(&self, req: &TrainRequest) -> Result<TrainJob, Status> {
        // A data-parallel rank may get no samples (it still takes part in every update).
        if req.samples.is_empty() && self.cfg.server.world_size <= 1 {
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

    async fn one(&self, work: Work) -> Result<Done, Status> {
        self.engine
            .submit(vec![work])
            .await?
            .pop()
            .ok_or_else(|| Status::internal("no result"))
    }
}

#[tonic::async_trait]
impl CriticService for CriticServer {
    async fn values(
        &self,
        request: Request<ValuesRequest>,
    ) -> Result<Response<ValuesResponse>, Status> {
        let req = request.into_inner();
        if req.sequences.is_empty() {
            return Err(invalid("sequences", "at least one sequence is required"));
        }
        let work = req
            .sequences
            .iter()
            .enumerate()
            .map(|(i, s)| self.pair(&format!("sequences[{i}]"), s).map(Work::Values))
            .collect::<Result<Vec<_>, _>>()?;
        let done = self.engine.submit(work).await?;
        let results = req
            .sequences
            .into_iter()
            .zip(done)
            .map(|(s, d)| match d {
                Done::Values(values) => Ok(TokenValues { id: s.id, values }),
                other => Err(Status::internal(format!(
                    "unexpected engine result {other:?}"
                ))),
            })
            .collect::<Result<_, _>>()?;
        Ok(Response::new(ValuesResponse { results }))
    }

    async fn train(
        &self,
        request: Request<TrainRequest>,
    ) -> Result<Response<TrainResponse>, Status> {
        let job = match self.train_job(&request.into_inner()) {
            Ok(job) => job,
            Err(status) => {
                if self.cfg.server.world_size > 1 {
                    // The other ranks are waiting for this one's part of the update.
                    let _ = self.one(Work::TrainRejected).await;
                }
                return Err(status);
            }
        };
        match self.one(Work::Train(Box::new(job))).await? {
            Done::Trained(s) => Ok(Response::new(TrainResponse {
                loss_first: s.loss_first as f32,
                loss_last: s.loss_last as f32,
                loss_mean: s.loss_mean as f32,
                updates: s.updates as u32,
                grad_norm_mean: s.grad_norm_mean as f32,
                param_checksum: s.param_checksum,
            })),
            other => Err(Status::internal(format!(
                "unexpected engine result {other:?}"
            ))),
        }
    }

    async fn save_checkpoint(
        &self,
        request: Request<SaveCheckpointRequest>,
    ) -> Result<Response<SaveCheckpointResponse>, Status> {
        checkpoint_rpc::save(&self.engine, request.into_inner(), Work::Save).await
    }

    async fn load_checkpoint(
        &self,
        request: Request<LoadCheckpointRequest>,
    ) -> Result<Response<LoadCheckpointResponse>, Status> {
        // With several ranks the engines check the path together (rank 0 must read it).
        let check_here = self.cfg.server.world_size <= 1;
        checkpoint_rpc::load(&self.engine, request.into_inner(), check_here, Work::Load).await
    }

    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(InfoResponse {
            model_id: self.cfg.model.display().to_string(),
            vocab_size: self.vocab_size as u32,
            max_length: self.cfg.max_length as u32,
            rank: Some(RankInfo {
                rank: self.cfg.server.rank,
                world_size: self.cfg.server.world_size,
                device: self.cfg.engine.device.clone(),
            }),
        }))
    }
}

/// A running critic service.
pub type Running = server::Running<Engine<Work, Done>>;

/// Loads the critic, binds `cfg.server.addr`, and serves until `shutdown` resolves.
pub async fn start(
    cfg: CriticServiceConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Running, Box<dyn std::error::Error + Send + Sync>> {
    cfg.validate()?;
    let load_cfg = cfg.clone();
    server::load_and_launch(
        &cfg.server,
        move || CriticServer::load(load_cfg),
        |svc| svc.engine.clone(),
        |svc, limit| {
            CriticServiceServer::new(svc)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit)
        },
        shutdown,
    )
    .await
}
