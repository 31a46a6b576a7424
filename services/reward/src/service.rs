//! The tonic implementation of `rrlhf.reward.v1.RewardService`: validates and tokenises
//! requests, hands token ids to the engine, and aggregates the head outputs with the requested
//! strategy. Every bad request is INVALID_ARGUMENT naming the field; the service keeps serving.

use std::pin::Pin;

use rrlhf_model::TextTokenizer;
use rrlhf_proto::common::v1::{Calibration, RankInfo};
use rrlhf_proto::reward::v1::reward_service_server::{RewardService, RewardServiceServer};
use rrlhf_proto::reward::v1::{
    HeadReward, InfoRequest, InfoResponse, Sample, SampleScore, ScoreRequest, ScoreResponse,
    UncertaintySet as ProtoSet,
};
use rrlhf_robust::{HeadOutputs, Strategy, UncertaintySet, aggregate};
use rrlhf_runtime::server;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::config::RewardServiceConfig;
use crate::engine::{self, EngineHandle};
use crate::error::ServiceError;

#[derive(Clone, Debug)]
pub struct RewardServer {
    pub engine: EngineHandle,
    tokenizer: TextTokenizer,
    cfg: RewardServiceConfig,
}

impl RewardServer {
    /// Loads the model (blocking until the warm-up pass has run).
    pub fn load(cfg: RewardServiceConfig) -> Result<Self, ServiceError> {
        let (engine, tokenizer) = engine::spawn(&cfg)?;
        Ok(Self {
            engine,
            tokenizer,
            cfg,
        })
    }

    /// The strategy a request asks for, with defaults from the config.
    fn strategy(&self, req: &ScoreRequest) -> Result<Strategy, ServiceError> {
        if let Some(l) = req.lambda.filter(|l| !(0.0..=1.0).contains(l)) {
            return Err(ServiceError::invalid(
                "lambda",
                format!("must be in [0, 1], got {l}"),
            ));
        }
        if let Some(c) = req.uwo_c.filter(|c| !(c.is_finite() && *c >= 0.0)) {
            return Err(ServiceError::invalid(
                "uwo_c",
                format!("must be finite and ≥ 0, got {c}"),
            ));
        }
        let name = if req.strategy.trim().is_empty() {
            self.cfg.default_strategy.as_str()
        } else {
            req.strategy.trim()
        };
        let spelled = match name {
            "tradeoff" | "batch_worst_head" => {
                format!("{name}:{}", req.lambda.unwrap_or(self.cfg.default_lambda))
            }
            "uwo" => format!("uwo:{}", req.uwo_c.unwrap_or(self.cfg.default_uwo_c)),
            other => other.to_string(),
        };
        let strategy: Strategy = spelled.parse().map_err(|e: rrlhf_robust::RobustError| {
            ServiceError::invalid("strategy", e.to_string())
        })?;
        let takes_lambda = matches!(
            strategy,
            Strategy::Tradeoff { .. } | Strategy::BatchWorstHead { .. }
        );
        if req.lambda.is_some() && !takes_lambda {
            return Err(ServiceError::invalid(
                "lambda",
                format!("strategy `{strategy}` takes no λ"),
            ));
        }
        Ok(strategy)
    }

    /// Token ids of every sample, validated.
    fn encode(&self, samples: &[Sample]) -> Result<Vec<Vec<i64>>, ServiceError> {
        if samples.is_empty() {
            return Err(ServiceError::invalid(
                "samples",
                "at least one sample is required",
            ));
        }
        let vocab = self.engine.info.vocab_size;
        let max = self.cfg.max_length;
        samples
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if !s.token_ids.is_empty() {
                    if let Some(t) = s.token_ids.iter().find(|&&t| t < 0 || t >= vocab) {
                        return Err(ServiceError::invalid(format!("samples[{i}].token_ids"), format!("id {t} is outside [0, {vocab})")));
                    }
                    if s.token_ids.len() > max {
                        return Err(ServiceError::invalid(format!("samples[{i}].token_ids"), format!("{} tokens exceed max_length {max}", s.token_ids.len())));
                    }
                    return Ok(s.token_ids.clone());
                }
                if s.response.trim().is_empty() {
                    return Err(ServiceError::invalid(format!("samples[{i}].response"), "must not be empty"));
                }
                let (ids, full) = self.tokenizer.encode_pair(&s.prompt, &s.response, max)?;
                if full > max && self.cfg.overlong == "reject" {
                    return Err(ServiceError::invalid(format!("samples[{i}]"), format!("{full} tokens exceed max_length {max} (the server rejects longer samples)")));
                }
                Ok(ids)
            })
            .collect()
    }

    /// Validates, scores and aggregates one request.
    pub async fn score_request(&self, req: ScoreRequest) -> Result<ScoreResponse, ServiceError> {
        let strategy = self.strategy(&req)?;
        let set = match ProtoSet::try_from(req.uncertainty_set) {
            Ok(ProtoSet::Unspecified | ProtoSet::Mean) => UncertaintySet::Mean,
            Ok(ProtoSet::Sampled) => UncertaintySet::Sampled,
            Err(_) => {
                return Err(ServiceError::invalid(
                    "uncertainty_set",
                    format!("unknown value {}", req.uncertainty_set),
                ));
            }
        };
        let ids = self.encode(&req.samples)?;
        let lengths: Vec<usize> = ids.iter().map(Vec::len).collect();
        let heads = self.engine.score(ids).await?;
        let aggregated = aggregate(&heads, strategy, set, req.seed)
            .map_err(|e| ServiceError::invalid("samples", e.to_string()))?;
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

fn to_proto(
    id: &str,
    h: HeadOutputs,
    a: rrlhf_robust::strategy::Aggregated,
    num_tokens: usize,
) -> SampleScore {
    let s = a.summary;
    SampleScore {
        id: id.to_string(),
        heads: h
            .mu
            .iter()
            .zip(&h.sigma)
            .map(|(&mu, &sigma)| HeadReward { mu, sigma })
            .collect(),
        nominal_head: s.nominal_head as u32,
        nominal: s.nominal,
        min: s.min,
        max: s.max,
        mean: s.mean,
        median: s.median,
        variance: s.variance,
        reward: a.reward,
        num_tokens: num_tokens as u32,
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
        tokio::spawn(async move {
            while let Some(next) = incoming.next().await {
                let reply = match next {
                    Ok(req) => this.score_request(req).await.map_err(Status::from),
                    Err(status) => Err(status),
                };
                let failed = reply.is_err();
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
            overlong: self.cfg.overlong.clone(),
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
            rank: Some(RankInfo {
                rank: self.cfg.server.rank,
                world_size: self.cfg.server.world_size,
                device: self.cfg.engine.device.clone(),
            }),
            vocab_size: info.vocab_size as u32,
        }))
    }
}

fn serde_kind(meta: &rrlhf_model::RewardMeta) -> String {
    match meta.kind {
        rrlhf_model::RewardKind::BradleyTerry => "bradley_terry".into(),
        rrlhf_model::RewardKind::Brme => "brme".into(),
    }
}

/// A running reward service.
pub type Running = server::Running<EngineHandle>;

/// Loads the model (health turns SERVING once it has loaded and warmed up), binds
/// `cfg.server.addr`, and serves until `shutdown` resolves.
pub async fn start(
    cfg: RewardServiceConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Running, Box<dyn std::error::Error + Send + Sync>> {
    cfg.validate()?;
    let load_cfg = cfg.clone();
    server::load_and_launch(
        &cfg.server,
        move || RewardServer::load(load_cfg),
        |svc| svc.engine.clone(),
        |svc, limit| {
            RewardServiceServer::new(svc)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit)
        },
        shutdown,
    )
    .await
}
