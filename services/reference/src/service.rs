//! The tonic implementation of `rrlhf.reference.v1.ReferenceService` and the reference's
//! [`ModelService`]: requests are validated ([`crate::convert`]); the engine thread owns the
//! frozen model.

use rrlhf_model::CausalLm;
use rrlhf_proto::common::v1::{LogProbsRequest, LogProbsResponse};
use rrlhf_proto::reference::v1::reference_service_server::{
    ReferenceService, ReferenceServiceServer,
};
use rrlhf_proto::reference::v1::{InfoRequest, InfoResponse};
use rrlhf_runtime::engine::{Engine, LoadError, PanicPolicy};
use rrlhf_runtime::server;
use rrlhf_runtime::service::{self, ModelService};
use rrlhf_runtime::validate::log_probs_response;
use tonic::{Request, Response, Status};

use crate::config::{ReferenceServiceConfig, ReferenceSettings};
use crate::engine::{self, Pair};

#[derive(Clone, Debug)]
pub struct ReferenceServer {
    pub engine: Engine<Pair, Vec<f32>>,
    pub(crate) vocab_size: i64,
    pub(crate) cfg: ReferenceServiceConfig,
}

impl ModelService for ReferenceServer {
    const NAME: &'static str = "reference";
    /// A frozen model cannot be left half-changed.
    const ON_PANIC: PanicPolicy = PanicPolicy::KeepServing;
    type Settings = ReferenceSettings;
    type Engine = Engine<Pair, Vec<f32>>;
    type Api = ReferenceServiceServer<Self>;

    fn load(cfg: ReferenceServiceConfig) -> Result<Self, LoadError> {
        let load_cfg = cfg.clone();
        let (engine, vocab_size) = Engine::spawn(
            &format!("{}-engine", Self::NAME),
            cfg.engine.batch(Self::ON_PANIC),
            move || engine::load(&load_cfg),
            |model: &CausalLm, pairs: &[Pair]| {
                engine::logprobs(model, pairs).map_err(|e| e.to_string())
            },
            |(p, r): &Pair| p.len() + r.len(),
        )?;
        Ok(Self {
            engine,
            vocab_size,
            cfg,
        })
    }

    fn engine(&self) -> Self::Engine {
        self.engine.clone()
    }

    fn api(self, limit: usize) -> Self::Api {
        ReferenceServiceServer::new(self)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }
}

#[tonic::async_trait]
impl ReferenceService for ReferenceServer {
    async fn log_probs(
        &self,
        request: Request<LogProbsRequest>,
    ) -> Result<Response<LogProbsResponse>, Status> {
        let req = request.into_inner();
        let pairs = self.pairs(&req)?;
        let rows = self.engine.submit(pairs).await?;
        Ok(Response::new(log_probs_response(req.sequences, rows)))
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
            rank: Some(self.cfg.rank_info()),
        }))
    }
}

/// A running reference service.
pub type Running = server::Running<Engine<Pair, Vec<f32>>>;

/// Loads the frozen model, binds `cfg.server.addr`, and serves until `shutdown` resolves.
pub async fn start(
    cfg: ReferenceServiceConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, service::StartError> {
    service::start::<ReferenceServer>(cfg, shutdown).await
}
