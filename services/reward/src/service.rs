//! The tonic implementation of `rrlhf.reward.v1.RewardService` and the reward service's
//! [`ModelService`]: requests are validated and tokenised ([`crate::convert`]), token ids go to
//! the engine, and the head outputs are aggregated with the requested strategy. Every bad
//! request is INVALID_ARGUMENT naming the field; the service keeps serving.

use std::pin::Pin;

use rrlhf_model::TextTokenizer;
use rrlhf_proto::common::v1::Calibration;
use rrlhf_proto::reward::v1::reward_service_server::{RewardService, RewardServiceServer};
use rrlhf_proto::reward::v1::{InfoRequest, InfoResponse, ScoreRequest, ScoreResponse};
use rrlhf_robust::aggregate;
use rrlhf_runtime::engine::{LoadError, PanicPolicy};
use rrlhf_runtime::server;
use rrlhf_runtime::service::{self, ModelService};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::config::{RewardServiceConfig, RewardSettings};
use crate::convert::{to_proto, uncertainty_set};
use crate::engine::{self, EngineHandle};
use crate::error::ServiceError;

#[derive(Clone, Debug)]
pub struct RewardServer {
    pub engine: EngineHandle,
    pub(crate) tokenizer: TextTokenizer,
    pub(crate) cfg: RewardServiceConfig,
}

impl ModelService for RewardServer {
    const NAME: &'static str = "reward";
    /// A frozen model cannot be left half-changed.
    const ON_PANIC: PanicPolicy = PanicPolicy::KeepServing;
    type Settings = RewardSettings;
    type Engine = EngineHandle;
    type Api = RewardServiceServer<Self>;

    /// Loads the model (blocking until the warm-up pass has run).
    fn load(cfg: RewardServiceConfig) -> Result<Self, LoadError> {
        let (engine, tokenizer) = engine::spawn(&cfg, Self::ON_PANIC).map_err(LoadError::of)?;
        Ok(Self {
            engine,
            tokenizer,
            cfg,
        })
    }

    fn engine(&self) -> Self::Engine {
        self.engine.clone()
    }

    fn api(self, limit: usize) -> Self::Api {
        RewardServiceServer::new(self)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }
}

impl RewardServer {
    /// Validates, scores and aggregates one request.
    pub async fn score_request(&self, req: ScoreRequest) -> Result<ScoreResponse, ServiceError> {
        let strategy = self.strategy(&req)?;
        let set = uncertainty_set(req.uncertainty_set)?;
        let ids = self.encode(&req.samples)?;
        let lengths: Vec<usize> = ids.iter().map(Vec::len).collect();
        let heads = self.engine.score(ids).await?;
        let aggregated = aggregate(&heads, strategy, set, req.seed).map_err(|e| match e {
            // The heads come from this service's own model: non-finite ones mean corrupt
            // weights, not a bad request.
            rrlhf_robust::RobustError::BadSample { .. } => {
                ServiceError::CorruptModel(e.to_string())
            }
            e => ServiceError::invalid("samples", e.to_string()),
        })?;
        let scores = req
            .samples
            .iter()
            .zip(heads)
            .zip(aggregated)
            .zip(lengths)
            .map(|(((sample, h), a), len)| to_proto(&sample.id, h, a, len))
            .collect();
        Ok(ScoreResponse {
            scores,
            strategy: strategy.to_string(),
        })
    }
}

type ScoreStream = Pin<Box<dyn Stream<Item = Result<ScoreResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RewardService for RewardServer {
    async fn score(
        &self,
        request: Request<ScoreRequest>,
    ) -> Result<Response<ScoreResponse>, Status> {
        Ok(Response::new(
            self.score_request(request.into_inner()).await?,
        ))
    }

    type ScoreStreamStream = ScoreStream;

    async fn score_stream(
        &self,
        request: Request<Streaming<ScoreRequest>>,
    ) -> Result<Response<Self::ScoreStreamStream>, Status> {
        let mut incoming = request.into_inner();
        let this = self.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<ScoreResponse, Status>>(16);
        // Requests are scored concurrently as they arrive — so the engine can merge them, or
        // at least always has the next one queued — and answered in arrival order, as the
        // stream's contract says. At most `IN_FLIGHT` wait for their turn to be answered.
        const IN_FLIGHT: usize = 64;
        type Scoring = tokio::task::JoinHandle<Result<ScoreResponse, Status>>;
        let (order_tx, mut order_rx) = tokio::sync::mpsc::channel::<Scoring>(IN_FLIGHT);
        tokio::spawn(async move {
            while let Some(next) = incoming.next().await {
                let scoring = match next {
                    Ok(req) => {
                        let this = this.clone();
                        tokio::spawn(
                            async move { this.score_request(req).await.map_err(Status::from) },
                        )
                    }
                    Err(status) => tokio::spawn(async move { Err(status) }),
                };
                if order_tx.send(scoring).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            while let Some(scoring) = order_rx.recv().await {
                let reply = scoring.await.unwrap_or_else(|e| {
                    Err(Status::internal(format!(
                        "scoring a stream request failed: {e}"
                    )))
                });
                let failed = reply.is_err();
                // The first error ends the stream (as before); dropping `order_rx` stops the
                // reader too.
                if tx.send(reply).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let info = &self.engine.info;
        let meta = &info.meta;
        Ok(Response::new(InfoResponse {
            kind: serde_kind(meta),
            heads: meta.heads as u32,
            max_length: self.cfg.max_length as u32,
            overlong: self.cfg.service.overlong.as_str().into(),
            tokenizer: self.tokenizer.path().display().to_string(),
            model_id: info.model_id.clone(),
            default_strategy: self
                .strategy(&ScoreRequest::default())
                .map(|s| s.to_string())
                .unwrap_or_default(),
            calibration: meta.calibration.as_ref().map(|c| Calibration {
                mean: c.mean,
                std: c.std,
                count: c.count as u64,
                reference: c.reference.clone().unwrap_or_default(),
            }),
            rank: Some(self.cfg.rank_info()),
            vocab_size: info.vocab_size as u32,
        }))
    }
}

fn serde_kind(meta: &rrlhf_model::RewardMeta) -> String {
    match meta.kind {
        rrlhf_model::RewardKind::BradleyTerry => "bradley_terry".into(),
        rrlhf_model::RewardKind::Brme => "brme".into(),
        rrlhf_model::RewardKind::Ensemble => "ensemble".into(),
    }
}

/// A running reward service.
pub type Running = server::Running<EngineHandle>;

/// Loads the model (health turns SERVING once it has loaded and warmed up), binds
/// `cfg.server.addr`, and serves until `shutdown` resolves.
pub async fn start(
    cfg: RewardServiceConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, service::StartError> {
    service::start::<RewardServer>(cfg, shutdown).await
}
