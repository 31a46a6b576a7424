//! The tonic implementation of `rrlhf.actor.v1.ActorService` and the actor's
//! [`ModelService`]: requests are validated ([`crate::convert`]) before the engine sees them;
//! `Generate` forwards each sample to the client the moment the engine finishes it.

use std::pin::Pin;
use std::sync::Arc;

use rrlhf_model::{Placement, TextTokenizer};
use rrlhf_proto::actor::v1::actor_service_server::{ActorService, ActorServiceServer};
use rrlhf_proto::actor::v1::{
    GenerateRequest, GeneratedSample, InfoRequest, InfoResponse, TrainRequest, TrainResponse,
};
use rrlhf_proto::common::v1::{
    LoadCheckpointRequest, LoadCheckpointResponse, LogProbsRequest, LogProbsResponse, RankInfo,
    SaveCheckpointRequest, SaveCheckpointResponse, TokenLogProbs,
};
use rrlhf_runtime::engine::{Engine, EngineError, LoadError, PanicPolicy};
use rrlhf_runtime::service::{self, ModelService};
use rrlhf_runtime::training_rpc::StartWeightsFlag;
use rrlhf_runtime::validate::{invalid, log_probs_response, sequence_pairs, unexpected};
use rrlhf_runtime::{server, training_rpc};
use rrlhf_train::data_parallel::DataParallel;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::config::{ActorServiceConfig, ActorSettings};
use crate::convert::{sample_to_proto, train_response};
use crate::engine::{Done, GenerateJob, Policy, PpoJob, Sampled, Work};

/// What the engine reports once loaded: vocabulary size, EOS id, tokenizer path.
type Loaded = (i64, i64, Option<String>);

#[derive(Clone)]
pub struct ActorServer {
    pub engine: Engine<Work, Done>,
    pub(crate) vocab_size: i64,
    pub(crate) eos_id: i64,
    tokenizer: Option<String>,
    /// The model directory's tokenizer, for prompts sent as text.
    pub(crate) text_tokenizer: Option<Arc<TextTokenizer>>,
    pub(crate) cfg: Arc<ActorServiceConfig>,
    /// Whether the weights are still the ones the actor started with (`Info`).
    start: StartWeightsFlag,
}

/// Loads the policy on the engine thread (joining its data-parallel group first) and runs a
/// warm-up pass.
fn load_policy(cfg: &ActorServiceConfig) -> Result<(Policy, Loaded), LoadError> {
    let e = &cfg.engine;
    let placement = Placement::for_engine(&e.device, &e.dtype, e.threads).map_err(LoadError::of)?;
    let dp = DataParallel::for_service(cfg.server.group(), placement.device)
        .map_err(|e| LoadError(format!("data-parallel group: {e}")))?;
    let wd = cfg.service.weight_decay;
    let lora = cfg.service.lora.as_ref();
    let mut policy = Policy::load(&cfg.model, placement, wd, lora, dp).map_err(LoadError::of)?;
    policy.model.backbone.activation_checkpointing = cfg.service.activation_checkpointing;
    policy
        .logprobs(&[(vec![0], vec![0])])
        .map_err(|e| LoadError(format!("warm-up: {e}")))?;
    let tokenizer = policy.tokenizer.as_ref();
    let report = (
        policy.model.cfg.vocab_size,
        policy.eos_id(),
        tokenizer.map(|t| t.path().display().to_string()),
    );
    Ok((policy, report))
}

impl ModelService for ActorServer {
    const NAME: &'static str = "actor";
    const ON_PANIC: PanicPolicy = PanicPolicy::Stop;
    type Settings = ActorSettings;
    type Engine = Engine<Work, Done>;
    type Api = ActorServiceServer<Self>;

    fn load(cfg: ActorServiceConfig) -> Result<Self, LoadError> {
        let load_cfg = cfg.clone();
        let (engine, (vocab_size, eos_id, tokenizer)) = Engine::spawn(
            &format!("{}-engine", Self::NAME),
            cfg.engine.batch(Self::ON_PANIC),
            move || load_policy(&load_cfg),
            |policy: &Policy, work: &[Work]| policy.run(work).map_err(|e| e.to_string()),
            |w: &Work| match w {
                Work::LogProbs((p, r)) => p.len() + r.len(),
                Work::BaseLogProbs(pairs) => pairs.iter().map(|(p, r)| p.len() + r.len()).sum(),
                _ => usize::MAX / 4,
            },
        )?;
        Ok(Self {
            engine,
            vocab_size,
            eos_id,
            tokenizer,
            text_tokenizer: TextTokenizer::load(&cfg.model).ok().map(Arc::new),
            cfg: Arc::new(cfg),
            start: StartWeightsFlag::default(),
        })
    }

    fn engine(&self) -> Self::Engine {
        self.engine.clone()
    }

    fn api(self, limit: usize) -> Self::Api {
        ActorServiceServer::new(self)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }
}

type SampleStream = Pin<Box<dyn Stream<Item = Result<GeneratedSample, Status>> + Send>>;

#[tonic::async_trait]
impl ActorService for ActorServer {
    type GenerateStream = SampleStream;

    async fn generate(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let req = request.into_inner();
        let params = self.sampling(&req)?;
        if req.prompts.is_empty() {
            return Err(invalid("prompts", "at least one prompt is required"));
        }
        if req.samples_per_prompt > 64 {
            return Err(invalid(
                "samples_per_prompt",
                format!("at most 64, got {}", req.samples_per_prompt),
            ));
        }
        let mut prompts = Vec::with_capacity(req.prompts.len());
        for (i, p) in req.prompts.iter().enumerate() {
            prompts.push(self.prompt_ids(i, p, params.max_new_tokens)?);
        }
        let ids: Vec<String> = req.prompts.into_iter().map(|p| p.id).collect();
        let (sample_tx, mut sample_rx) = tokio::sync::mpsc::unbounded_channel::<Sampled>();
        let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Result<GeneratedSample, Status>>(64);
        let prompt_ids = prompts.clone();
        let job = GenerateJob {
            prompts,
            samples_per_prompt: req.samples_per_prompt.max(1) as usize,
            params,
            out: sample_tx,
        };
        let engine = self.engine.clone();
        tokio::spawn(async move {
            let submit = engine.submit(vec![Work::Generate(job)]);
            tokio::pin!(submit);
            let mut result: Option<Result<Vec<Done>, EngineError>> = None;
            loop {
                tokio::select! {
                    sample = sample_rx.recv() => match sample {
                        Some(s) => {
                            if out_tx.send(Ok(sample_to_proto(&ids, &prompt_ids, s))).await.is_err() {
                                return; // the client went away
                            }
                        }
                        // The engine dropped the job: generation is over.
                        None => break,
                    },
                    r = &mut submit, if result.is_none() => result = Some(r),
                    // The client went away between samples: dropping the submission tells the
                    // engine, which stops the generation at its next step.
                    () = out_tx.closed() => return,
                }
            }
            let result = match result {
                Some(r) => r,
                None => submit.await,
            };
            if let Err(e) = result {
                let _ = out_tx.send(Err(e.into())).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out_rx),
        )))
    }

    async fn log_probs(
        &self,
        request: Request<LogProbsRequest>,
    ) -> Result<Response<LogProbsResponse>, Status> {
        let req = request.into_inner();
        let pairs = sequence_pairs(&req.sequences, self.vocab_size, self.cfg.max_length)?;
        let work = pairs.into_iter().map(Work::LogProbs).collect();
        let done = self.engine.submit(work).await?;
        let results = req
            .sequences
            .into_iter()
            .zip(done)
            .map(|(s, d)| match d {
                Done::LogProbs(logprobs) => Ok(TokenLogProbs { id: s.id, logprobs }),
                other => Err(unexpected(other)),
            })
            .collect::<Result<_, _>>()?;
        Ok(Response::new(LogProbsResponse { results }))
    }

    async fn base_log_probs(
        &self,
        request: Request<LogProbsRequest>,
    ) -> Result<Response<LogProbsResponse>, Status> {
        if self.cfg.service.lora.is_none() {
            return Err(Status::failed_precondition(
                "BaseLogProbs: this actor trains every weight (no `[lora]`), so it has no \
                 frozen base to serve as the reference; call a reference service",
            ));
        }
        let req = request.into_inner();
        let pairs = sequence_pairs(&req.sequences, self.vocab_size, self.cfg.max_length)?;
        let mut done = self.engine.submit(vec![Work::BaseLogProbs(pairs)]).await?;
        match done.pop() {
            Some(Done::BaseLogProbs(rows)) => {
                Ok(Response::new(log_probs_response(req.sequences, rows)))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn train(
        &self,
        request: Request<TrainRequest>,
    ) -> Result<Response<TrainResponse>, Status> {
        let job = self.ppo_job(request.into_inner());
        let stats =
            training_rpc::train(&self.engine, job, self.cfg.is_grouped(), &self.start).await?;
        Ok(Response::new(train_response(stats)))
    }

    async fn save_checkpoint(
        &self,
        request: Request<SaveCheckpointRequest>,
    ) -> Result<Response<SaveCheckpointResponse>, Status> {
        training_rpc::save::<PpoJob, _, _>(&self.engine, request.into_inner()).await
    }

    async fn load_checkpoint(
        &self,
        request: Request<LoadCheckpointRequest>,
    ) -> Result<Response<LoadCheckpointResponse>, Status> {
        let grouped = self.cfg.is_grouped();
        training_rpc::load::<PpoJob, _, _>(&self.engine, request.into_inner(), grouped, &self.start)
            .await
    }

    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(InfoResponse {
            model_id: self.cfg.model.display().to_string(),
            vocab_size: self.vocab_size as u32,
            max_length: self.cfg.max_length as u32,
            eos_id: self.eos_id,
            tokenizer: self.tokenizer.clone().unwrap_or_default(),
            rank: Some(RankInfo {
                start_weights: self.start.holds_start(),
                ..self.cfg.rank_info()
            }),
        }))
    }
}

/// A running actor service.
pub type Running = server::Running<Engine<Work, Done>>;

/// Loads the policy, binds `cfg.server.addr`, and serves until `shutdown` resolves.
pub async fn start(
    cfg: ActorServiceConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, service::StartError> {
    service::start::<ActorServer>(cfg, shutdown).await
}
