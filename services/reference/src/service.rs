//! The tonic implementation of `rrlhf.reference.v1.ReferenceService`. Requests are validated
//! here (INVALID_ARGUMENT naming the field) so a merged model batch never fails for one bad
//! sequence; the engine thread owns the frozen model.

use std::sync::Arc;

use rrlhf_model::{CausalLm, Placement};
use rrlhf_proto::common::v1::{LogProbsRequest, LogProbsResponse, RankInfo, TokenLogProbs};
use rrlhf_proto::reference::v1::reference_service_server::{
    ReferenceService, ReferenceServiceServer,
};
use rrlhf_proto::reference::v1::{InfoRequest, InfoResponse};
use rrlhf_runtime::engine::{Engine, LoadError};
use rrlhf_runtime::server;
use rrlhf_runtime::validate::{invalid, token_pair};
use tonic::{Request, Response, Status};

use crate::config::ReferenceServiceConfig;

type Pair = (Vec<i64>, Vec<i64>);

#[derive(Clone, Debug)]
pub struct ReferenceServer {
    pub engine: Engine<Pair, Vec<f32>>,
    vocab_size: i64,
    cfg: Arc<ReferenceServiceConfig>,
}

impl ReferenceServer {
    /// Loads the frozen model on its engine thread and runs a warm-up pass.
    pub fn load(cfg: ReferenceServiceConfig) -> Result<Self, LoadError> {
        let load_cfg = cfg.clone();
        let (engine, vocab_size) = Engine::spawn(
            "reference-engine",
            cfg.engine.batch(),
            move || -> Result<(CausalLm, i64), LoadError> {
                let err = |e: rrlhf_model::ModelError| LoadError(e.to_string());
                let placement = Placement::parse(&load_cfg.engine.device, &load_cfg.engine.dtype)
                    .map_err(err)?;
                rrlhf_model::device::set_threads(load_cfg.engine.threads);
                let mut model = CausalLm::from_dir(&load_cfg.model, placement).map_err(err)?;
                model.vs.freeze();
                let _guard = tch::no_grad_guard();
                model
                    .response_logprobs(&[(vec![0], vec![0])])
                    .map_err(|e| LoadError(format!("warm-up: {e}")))?;
                let vocab = model.cfg.vocab_size;
                Ok((model, vocab))
            },
            |model: &CausalLm, pairs: &[Pair]| {
                let _guard = tch::no_grad_guard();
                model.response_logprobs(pairs).map_err(|e| e.to_string())
            },
            |(p, r): &Pair| p.len() + r.len(),
        )?;
        Ok(Self {
            engine,
            vocab_size,
            cfg: Arc::new(cfg),
        })
    }

    fn validate(&self, req: &LogProbsRequest) -> Result<Vec<Pair>, Status> {
        if req.sequences.is_empty() {
            return Err(invalid("sequences", "at least one sequence is required"));
        }
        req.sequences
            .iter()
            .enumerate()
            .map(|(i, s)| {
                token_pair(
                    &format!("sequences[{i}]"),
                    &s.prompt_ids,
                    &s.response_ids,
                    self.vocab_size,
                    self.cfg.max_length,
                )
            })
            .collect()
    }
}

#[tonic::async_trait]
impl ReferenceService for ReferenceServer {
    async fn log_probs(
        &self,
        request: Request<LogProbsRequest>,
    ) -> Result<Response<LogProbsResponse>, Status> {
        let req = request.into_inner();
        let pairs = self.validate(&req)?;
        let rows = self.engine.submit(pairs).await?;
        let results = req
            .sequences
            .into_iter()
            .zip(rows)
            .map(|(s, logprobs)| TokenLogProbs { id: s.id, logprobs })
            .collect();
        Ok(Response::new(LogProbsResponse { results }))
    }

    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let tokenizer = self.cfg.model.join(rrlhf_model::tokenizer::TOKENIZER_JSON);
        Ok(Response::new(InfoResponse {
            model_id: self.cfg.model.display().to_string(),
            vocab_size: self.vocab_size as u32,
            max_length: self.cfg.max_length as u32,
            tokenizer: if tokenizer.exists() {
                tokenizer.display().to_string()
            } else {
                String::new()
            },
            rank: Some(RankInfo {
                rank: self.cfg.server.rank,
                world_size: self.cfg.server.world_size,
                device: self.cfg.engine.device.clone(),
            }),
        }))
    }
}

/// A running reference service.
pub type Running = server::Running<Engine<Pair, Vec<f32>>>;

/// Loads the frozen model, binds `cfg.server.addr`, and serves until `shutdown` resolves.
pub async fn start(
    cfg: ReferenceServiceConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Running, Box<dyn std::error::Error + Send + Sync>> {
    cfg.validate()?;
    let load_cfg = cfg.clone();
    server::load_and_launch(
        &cfg.server,
        move || ReferenceServer::load(load_cfg),
        |svc| svc.engine.clone(),
        |svc, limit| {
            ReferenceServiceServer::new(svc)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit)
        },
        shutdown,
    )
    .await
}
