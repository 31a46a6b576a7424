//! The tonic implementation of `rrlhf.actor.v1.ActorService`. Requests are validated here
//! (INVALID_ARGUMENT naming the field) before the engine sees them; `Generate` forwards each
//! sample to the client the moment the engine finishes it.

use std::pin::Pin;
use std::sync::Arc;

use rrlhf_model::generate::FinishReason;
use rrlhf_model::{Placement, SamplingParams, TextTokenizer};
use rrlhf_proto::actor::v1::actor_service_server::{ActorService, ActorServiceServer};
use rrlhf_proto::actor::v1::{
    GenerateRequest, GeneratedSample, InfoRequest, InfoResponse, Prompt, TrainRequest,
    TrainResponse,
};
use rrlhf_proto::common::v1::{
    LoadCheckpointRequest, LoadCheckpointResponse, LogProbsRequest, LogProbsResponse, RankInfo,
    SaveCheckpointRequest, SaveCheckpointResponse, TokenLogProbs,
};
use rrlhf_runtime::engine::{Engine, EngineError, LoadError};
use rrlhf_runtime::validate::{invalid, per_token, token_pair};
use rrlhf_runtime::{checkpoint_rpc, server};
use rrlhf_train::data_parallel::{DataParallel, UpdatePlan};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::config::ActorServiceConfig;
use crate::model::{Done, GenerateJob, Policy, PpoJob, Sampled, Work};

/// What the engine reports once loaded: vocabulary size, EOS id, tokenizer path.
type Loaded = (i64, i64, Option<String>);

#[derive(Clone)]
pub struct ActorServer {
    pub engine: Engine<Work, Done>,
    vocab_size: i64,
    eos_id: i64,
    tokenizer: Option<String>,
    /// The model directory's tokenizer, for prompts sent as text.
    text_tokenizer: Option<Arc<TextTokenizer>>,
    cfg: Arc<ActorServiceConfig>,
}

impl ActorServer {
    pub fn load(cfg: ActorServiceConfig) -> Result<Self, LoadError> {
        let load_cfg = cfg.clone();
        let (engine, (vocab_size, eos_id, tokenizer)) = Engine::spawn(
            "actor-engine",
            cfg.engine.batch(),
            move || -> Result<(Policy, Loaded), LoadError> {
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
                let policy = Policy::load(&load_cfg.model, placement, load_cfg.weight_decay, dp)
                    .map_err(err)?;
                policy
                    .logprobs(&[(vec![0], vec![0])])
                    .map_err(|e| LoadError(format!("warm-up: {e}")))?;
                let report = (
                    policy.model.cfg.vocab_size,
                    policy.eos_id(),
                    policy
                        .tokenizer
                        .as_ref()
                        .map(|t| t.path().display().to_string()),
                );
                Ok((policy, report))
            },
            |policy: &Policy, work: &[Work]| policy.run(work).map_err(|e| e.to_string()),
            |w: &Work| match w {
                Work::LogProbs((p, r)) => p.len() + r.len(),
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
        })
    }

    /// The ids of prompt `i`: its own, or its text through the actor's tokenizer (keeping the
    /// last tokens when it is too long); validated against the vocabulary and length limit.
    fn prompt_ids(&self, i: usize, p: &Prompt, max_new_tokens: usize) -> Result<Vec<i64>, Status> {
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
    fn train_job(&self, req: TrainRequest) -> Result<PpoJob, Status> {
        // A data-parallel rank may get no samples (it still takes part in every update).
        if req.samples.is_empty() && self.cfg.server.world_size <= 1 {
            return Err(invalid("samples", "at least one sample is required"));
        }
        for (name, value, ok) in [
            ("lr", req.lr, req.lr.is_finite() && req.lr > 0.0),
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
        let mut job = PpoJob {
            pairs: vec![],
            old_logprobs: vec![],
            advantages: vec![],
            clip_eps: req.clip_eps as f64,
            entropy_coef: req.entropy_coef as f64,
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
            let pair = token_pair(
                &format!("samples[{i}].sequence"),
                &seq.prompt_ids,
                &seq.response_ids,
                self.vocab_size,
                self.cfg.max_length,
            )?;
            for (name, v) in [
                ("old_logprobs", &s.old_logprobs),
                ("advantages", &s.advantages),
            ] {
                per_token(&format!("samples[{i}].{name}"), v, pair.1.len())?;
            }
            job.pairs.push(pair);
            job.old_logprobs.push(s.old_logprobs.clone());
            job.advantages.push(s.advantages.clone());
        }
        Ok(job)
    }

    fn sampling(&self, req: &GenerateRequest) -> Result<SamplingParams, Status> {
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
            stop_ids: if s.stop_ids.is_empty() {
                vec![self.eos_id]
            } else {
                s.stop_ids
            },
            seed: s.seed,
        })
    }
}

type SampleStream = Pin<Box<dyn Stream<Item = Result<GeneratedSample, Status>> + Send>>;

fn to_proto(ids: &[String], prompt_ids: &[Vec<i64>], s: Sampled) -> GeneratedSample {
    GeneratedSample {
        id: ids[s.prompt_index].clone(),
        prompt_ids: prompt_ids[s.prompt_index].clone(),
        prompt_index: s.prompt_index as u32,
        sample_index: s.sample_index as u32,
        token_ids: s.tokens,
        text: s.text,
        logprobs: s.logprobs,
        finish_reason: match s.finish {
            FinishReason::Stop => "stop".into(),
            FinishReason::Length => "length".into(),
        },
    }
}

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
                            if out_tx.send(Ok(to_proto(&ids, &prompt_ids, s))).await.is_err() {
                                return; // the client went away
                            }
                        }
                        // The engine dropped the job: generation is over.
                        None => break,
                    },
                    r = &mut submit, if result.is_none() => result = Some(r),
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
        if req.sequences.is_empty() {
            return Err(invalid("sequences", "at least one sequence is required"));
        }
        let work = req
            .sequences
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
                .map(Work::LogProbs)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let done = self.engine.submit(work).await?;
        let results = req
            .sequences
            .into_iter()
            .zip(done)
            .map(|(s, d)| match d {
                Done::LogProbs(logprobs) => Ok(TokenLogProbs { id: s.id, logprobs }),
                other => Err(Status::internal(format!(
                    "unexpected engine result {other:?}"
                ))),
            })
            .collect::<Result<_, _>>()?;
        Ok(Response::new(LogProbsResponse { results }))
    }

    async fn train(
        &self,
        request: Request<TrainRequest>,
    ) -> Result<Response<TrainResponse>, Status> {
        let job = match self.train_job(request.into_inner()) {
            Ok(job) => job,
            Err(status) => {
                if self.cfg.server.world_size > 1 {
                    // The other ranks are waiting for this one's part of the update.
                    let _ = self.engine.submit(vec![Work::TrainRejected]).await;
                }
                return Err(status);
            }
        };
        match self
            .engine
            .submit(vec![Work::Train(Box::new(job))])
            .await?
            .pop()
        {
            Some(Done::Trained(s)) => Ok(Response::new(TrainResponse {
                policy_loss_first: s.loss_first as f32,
                policy_loss_last: s.loss_last as f32,
                policy_loss_mean: s.loss_mean as f32,
                clip_fraction: s.clip_fraction as f32,
                approx_kl: s.approx_kl as f32,
                entropy: s.entropy as f32,
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
            eos_id: self.eos_id,
            tokenizer: self.tokenizer.clone().unwrap_or_default(),
            rank: Some(RankInfo {
                rank: self.cfg.server.rank,
                world_size: self.cfg.server.world_size,
                device: self.cfg.engine.device.clone(),
            }),
        }))
    }
}

/// A running actor service.
pub type Running = server::Running<Engine<Work, Done>>;

/// Loads the policy, binds `cfg.server.addr`, and serves until `shutdown` resolves.
pub async fn start(
    cfg: ActorServiceConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Running, Box<dyn std::error::Error + Send + Sync>> {
    cfg.validate()?;
    let load_cfg = cfg.clone();
    server::load_and_launch(
        &cfg.server,
        move || ActorServer::load(load_cfg),
        |svc| svc.engine.clone(),
        |svc, limit| {
            ActorServiceServer::new(svc)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit)
        },
        shutdown,
    )
    .await
}
