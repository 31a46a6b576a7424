//! The tonic implementation of `rrlhf.critic.v1.CriticService` and the critic's
//! [`ModelService`]: requests are validated ([`crate::convert`]) before the engine sees them.

use std::sync::Arc;

use rrlhf_model::Placement;
use rrlhf_proto::common::v1::{
    LoadCheckpointRequest, LoadCheckpointResponse, RankInfo, SaveCheckpointRequest,
    SaveCheckpointResponse,
};
use rrlhf_proto::critic::v1::critic_service_server::{CriticService, CriticServiceServer};
use rrlhf_proto::critic::v1::{
    InfoRequest, InfoResponse, TokenValues, TrainRequest, TrainResponse, ValuesRequest,
    ValuesResponse,
};
use rrlhf_runtime::engine::{Engine, LoadError, PanicPolicy};
use rrlhf_runtime::service::{self, ModelService};
use rrlhf_runtime::training_rpc::StartWeightsFlag;
use rrlhf_runtime::validate::{sequence_pairs, unexpected};
use rrlhf_runtime::{server, training_rpc};
use rrlhf_train::data_parallel::DataParallel;
use tonic::{Request, Response, Status};

use crate::config::{CriticServiceConfig, CriticSettings};
use crate::convert::train_response;
use crate::engine::{Critic, Done, TrainJob, Work};

#[derive(Clone)]
pub struct CriticServer {
    pub engine: Engine<Work, Done>,
    pub(crate) vocab_size: i64,
    pub(crate) cfg: Arc<CriticServiceConfig>,
    /// Whether the weights are still the ones the critic started with (`Info`).
    start: StartWeightsFlag,
}

/// Loads the critic on the engine thread (joining its data-parallel group first) and runs a
/// warm-up pass.
fn load_critic(cfg: &CriticServiceConfig) -> Result<(Critic, i64), LoadError> {
    let e = &cfg.engine;
    let placement = Placement::for_engine(&e.device, &e.dtype, e.threads).map_err(LoadError::of)?;
    let dp = DataParallel::for_service(cfg.server.group(), placement.device)
        .map_err(|e| LoadError(format!("data-parallel group: {e}")))?;
    let wd = cfg.service.weight_decay;
    let mut critic = Critic::load(&cfg.model, placement, wd, cfg.service.lora.as_ref(), dp)
        .map_err(LoadError::of)?;
    critic.set_activation_checkpointing(cfg.service.activation_checkpointing);
    critic
        .values(&[(vec![0], vec![0])])
        .map_err(|e| LoadError(format!("warm-up: {e}")))?;
    let vocab = critic.vocab_size();
    Ok((critic, vocab))
}

impl ModelService for CriticServer {
    const NAME: &'static str = "critic";
    const ON_PANIC: PanicPolicy = PanicPolicy::Stop;
    type Settings = CriticSettings;
    type Engine = Engine<Work, Done>;
    type Api = CriticServiceServer<Self>;

    fn load(cfg: CriticServiceConfig) -> Result<Self, LoadError> {
        let load_cfg = cfg.clone();
        let (engine, vocab_size) = Engine::spawn(
            &format!("{}-engine", Self::NAME),
            cfg.engine.batch(Self::ON_PANIC),
            move || load_critic(&load_cfg),
            |critic: &Critic, work: &[Work]| critic.run(work).map_err(|e| e.to_string()),
            |w: &Work| match w {
                Work::Values((p, r)) => p.len() + r.len(),
                Work::Training(_) => usize::MAX / 4,
            },
        )?;
        Ok(Self {
            engine,
            vocab_size,
            cfg: Arc::new(cfg),
            start: StartWeightsFlag::default(),
        })
    }

    fn engine(&self) -> Self::Engine {
        self.engine.clone()
    }

    fn api(self, limit: usize) -> Self::Api {
        CriticServiceServer::new(self)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }
}

#[tonic::async_trait]
impl CriticService for CriticServer {
    async fn values(
        &self,
        request: Request<ValuesRequest>,
    ) -> Result<Response<ValuesResponse>, Status> {
        let req = request.into_inner();
        let pairs = sequence_pairs(&req.sequences, self.vocab_size, self.cfg.max_length)?;
        let work = pairs.into_iter().map(Work::Values).collect();
        let done = self.engine.submit(work).await?;
        let results = req
            .sequences
            .into_iter()
            .zip(done)
            .map(|(s, d)| match d {
                Done::Values(values) => Ok(TokenValues { id: s.id, values }),
                other => Err(unexpected(other)),
            })
            .collect::<Result<_, _>>()?;
        Ok(Response::new(ValuesResponse { results }))
    }

    async fn train(
        &self,
        request: Request<TrainRequest>,
    ) -> Result<Response<TrainResponse>, Status> {
        let job = self.value_job(&request.into_inner());
        let stats =
            training_rpc::train(&self.engine, job, self.cfg.is_grouped(), &self.start).await?;
        Ok(Response::new(train_response(stats)))
    }

    async fn save_checkpoint(
        &self,
        request: Request<SaveCheckpointRequest>,
    ) -> Result<Response<SaveCheckpointResponse>, Status> {
        training_rpc::save::<TrainJob, _, _>(&self.engine, request.into_inner()).await
    }

    async fn load_checkpoint(
        &self,
        request: Request<LoadCheckpointRequest>,
    ) -> Result<Response<LoadCheckpointResponse>, Status> {
        let grouped = self.cfg.is_grouped();
        training_rpc::load::<TrainJob, _, _>(
            &self.engine,
            request.into_inner(),
            grouped,
            &self.start,
        )
        .await
    }

    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(InfoResponse {
            model_id: self.cfg.model.display().to_string(),
            vocab_size: self.vocab_size as u32,
            max_length: self.cfg.max_length as u32,
            rank: Some(RankInfo {
                start_weights: self.start.holds_start(),
                ..self.cfg.rank_info()
            }),
        }))
    }
}

/// A running critic service.
pub type Running = server::Running<Engine<Work, Done>>;

/// Loads the critic, binds `cfg.server.addr`, and serves until `shutdown` resolves.
pub async fn start(
    cfg: CriticServiceConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, service::StartError> {
    service::start::<CriticServer>(cfg, shutdown).await
}
