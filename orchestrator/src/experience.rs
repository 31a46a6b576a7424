//! The experience of one step: the actor's `Generate` streams (one per actor rank, each with
//! its shard of the prompts) deliver samples as they finish; each chunk of
//! `sequences_per_call` consecutive prompts, once all its samples are in, goes as one request
//! each to a reward replica's `ScoreStream` (chunk c to replica c mod R, one stream per
//! replica), the reference's `LogProbs` and the critic's `Values` (and the actor's `LogProbs`
//! when the config asks for recomputed behaviour log-probs, or an actor reports no policy
//! log-probs for reshaped sampling), concurrently, so scoring overlaps generation. Chunks are
//! cut by prompt index, not by arrival, so a call's sequences (and its results) do not depend
//! on timing. With extra reward sources (`endpoints.extra_rewards`) every chunk also goes to
//! each source's streams, and each sample keeps every source's heads. Every call survives a
//! service restart: transient failures are retried with backoff, a broken score stream is
//! reopened and the unanswered samples resent.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use rrlhf_proto::actor::v1::{GenerateRequest, GeneratedSample, SamplingParams};
use rrlhf_proto::common::v1::{LogProbsRequest, Sequence};
use rrlhf_proto::critic::v1::ValuesRequest;
use rrlhf_proto::reward::v1::{Sample, SampleScore, ScoreRequest};
use rrlhf_robust::HeadOutputs;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::Status;
use tracing::Instrument;

use crate::clients::{Backoff, RewardPool, Services, is_transient, retry, with_deadline};
use crate::config::{RetrySettings, Sampling};
use crate::error::{OrchestratorError, Result};
use crate::prompts::PromptInput;

/// One scored sample with everything PPO needs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rollout {
    pub prompt: String,
    pub prompt_ids: Vec<i64>,
    pub response_ids: Vec<i64>,
    pub response_text: String,
    pub finish_reason: String,
    /// log π_old of each response token (the behaviour policy).
    pub logprobs: Vec<f32>,
    /// log π₀ of each response token (the frozen reference).
    pub ref_logprobs: Vec<f32>,
    /// V(s_t) before each response token.
    pub values: Vec<f32>,
    /// Every BRME head's μ and σ; with extra reward sources, the fused set, which
    /// [`crate::sources::Fusion::apply`] fills in (empty until then).
    pub heads_mu: Vec<f32>,
    pub heads_sigma: Vec<f32>,
    /// Each reward source's raw heads, `endpoints.reward` first, when there are extra
    /// sources; empty otherwise.
    pub source_heads: Vec<HeadOutputs>,
}

/// Wall-clock split of the experience phase.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Until the last sample was generated.
    pub generate_secs: f64,
    /// From the last generated sample until the last score/value/log-prob arrived.
    pub score_tail_secs: f64,
    pub generated_tokens: usize,
}

/// What a step needs to know to collect its experience.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub prompts: &'a [PromptInput],
    pub sampling: &'a Sampling,
    pub seed: u64,
    /// The actor's EOS id, appended when a sample's ids are sent to the reward service.
    pub eos_id: i64,
    /// Prefix of sample ids (unique per step).
    pub id_prefix: String,
    /// Sequences per reference `LogProbs` / critic `Values` call (at least 1).
    pub sequences_per_call: usize,
}

struct Arrived {
    index: usize,
    sample: GeneratedSample,
}

/// Generates, scores and evaluates one sample per prompt; the result is in prompt order.
pub async fn collect(
    services: &Services,
    retry_cfg: &RetrySettings,
    req: Request<'_>,
) -> Result<(Vec<Rollout>, Timings)> {
    let n = req.prompts.len();
    let started = Instant::now();
    let (arrive_tx, mut arrive_rx) = mpsc::unbounded_channel::<Arrived>();
    let ranks = services.actor.len();
    let shard = n.div_ceil(ranks);
    let mut generators = JoinSet::new();
    for rank in 0..ranks {
        let range = (rank * shard).min(n)..((rank + 1) * shard).min(n);
        if range.is_empty() {
            continue;
        }
        let prompts: Vec<(usize, PromptInput)> =
            range.clone().map(|i| (i, req.prompts[i].clone())).collect();
        let client = services.actor.rank(rank);
        let tx = arrive_tx.clone();
        let sampling = req.sampling.clone();
        let seed = req.seed.wrapping_add(rank as u64);
        let retry_cfg = retry_cfg.clone();
        generators.spawn(
            async move { generate_shard(client, &retry_cfg, prompts, &sampling, seed, tx).await }
                .in_current_span(),
        );
    }
    drop(arrive_tx);

    // One score stream per replica of each reward source; chunk c of the prompts goes to
    // stream c mod R of every source.
    let sources: Vec<(String, RewardPool)> =
        std::iter::once(("reward ScoreStream".to_string(), services.reward.clone()))
            .chain(services.extra_rewards.iter().map(|s| {
                (
                    format!("reward source `{}` ScoreStream", s.name),
                    s.pool.clone(),
                )
            }))
            .collect();
    let mut score_txs: Vec<Vec<mpsc::UnboundedSender<Vec<Sample>>>> = vec![vec![]; sources.len()];
    let mut scorers = JoinSet::new();
    for (source, (what, pool)) in sources.iter().enumerate() {
        for replica in 0..pool.len() {
            let (tx, rx) = mpsc::unbounded_channel::<Vec<Sample>>();
            score_txs[source].push(tx);
            let (pool, what, retry_cfg) = (pool.clone(), what.clone(), retry_cfg.clone());
            scorers.spawn(
                async move {
                    let scores = score_stream(&pool, &what, &retry_cfg, replica, rx).await;
                    scores.map(|s| (source, s))
                }
                .in_current_span(),
            );
        }
    }

    let mut arrived: Vec<Option<GeneratedSample>> = vec![None; n];
    let per_call = req.sequences_per_call.max(1);
    // Samples still missing from each chunk of prompts [c·per_call, (c+1)·per_call).
    let mut missing: Vec<usize> = (0..n.div_ceil(per_call))
        .map(|c| per_call.min(n - c * per_call))
        .collect();
    let mut evaluations = JoinSet::new();
    let mut generated_tokens = 0;
    let sequence = |index: usize, sample: &GeneratedSample| Sequence {
        id: format!("{}{index}", req.id_prefix),
        prompt_ids: sample.prompt_ids.clone(),
        response_ids: sample.token_ids.clone(),
    };
    while let Some(Arrived { index, sample }) = arrive_rx.recv().await {
        if arrived[index].is_some() {
            continue;
        }
        generated_tokens += sample.token_ids.len();
        arrived[index] = Some(sample);
        let chunk = index / per_call;
        missing[chunk] -= 1;
        if missing[chunk] > 0 {
            continue;
        }
        let first = chunk * per_call;
        let members = first..first + per_call.min(n - first);
        let seqs: Vec<Sequence> = members
            .clone()
            .map(|i| sequence(i, arrived[i].as_ref().expect("the chunk is complete")))
            .collect();
        // The chunk's samples are scored together: one request, so one model batch whatever
        // the timing (runs stay reproducible without merging concurrent requests).
        let to_score: Vec<Sample> = members
            .map(|i| {
                let id = format!("{}{i}", req.id_prefix);
                let sample = arrived[i].as_ref().expect("the chunk is complete");
                reward_sample(&id, &req.prompts[i], sample, req.eos_id)
            })
            .collect();
        // Every source scores the chunk; the last takes it without a copy (with one source,
        // the only one).
        if let Some((last, others)) = score_txs.split_last() {
            for txs in others {
                let _ = txs[chunk % txs.len()].send(to_score.clone());
            }
            let _ = last[chunk % last.len()].send(to_score);
        }
        let services = services.clone();
        let retry_cfg = retry_cfg.clone();
        // The actor's policy log-probs stand for the training forward's unless the config asks
        // for the latter, or an actor without them sampled from a reshaped distribution.
        let recompute = req.sampling.recompute_logprobs
            || (!req.sampling.is_plain()
                && (first..first + seqs.len()).any(|i| {
                    arrived[i]
                        .as_ref()
                        .is_some_and(|s| s.policy_logprobs.is_empty())
                }));
        evaluations.spawn(
            async move {
                let r = enrich(&services, &retry_cfg, seqs, recompute).await;
                (first, r)
            }
            .in_current_span(),
        );
    }
    drop(score_txs);
    let task = |what| move |error| OrchestratorError::Task { what, error };
    while let Some(r) = generators.join_next().await {
        r.map_err(task("generation"))??;
    }
    let generate_secs = started.elapsed().as_secs_f64();

    let mut extras: Vec<Option<Extras>> = vec![None; n];
    while let Some(r) = evaluations.join_next().await {
        let (first, r) = r.map_err(task("evaluation"))?;
        for (i, e) in r?.into_iter().enumerate() {
            extras[first + i] = Some(e);
        }
    }
    let mut scores: Vec<HashMap<String, SampleScore>> =
        vec![HashMap::with_capacity(n); sources.len()];
    while let Some(r) = scorers.join_next().await {
        let (source, done) = r.map_err(task("scoring"))??;
        scores[source].extend(done);
    }
    let score_tail_secs = started.elapsed().as_secs_f64() - generate_secs;

    let mut out = Vec::with_capacity(n);
    for (index, (sample, extra)) in arrived.into_iter().zip(extras).enumerate() {
        let id = format!("{}{index}", req.id_prefix);
        let sample = sample.ok_or_else(|| {
            OrchestratorError::bad_response(
                "actor Generate",
                format!("no sample for prompt {index}"),
            )
        })?;
        let extra = extra.ok_or_else(|| {
            OrchestratorError::bad_response("evaluation", format!("sample {id} was not evaluated"))
        })?;
        let mut heads = Vec::with_capacity(sources.len());
        for ((what, _), scores) in sources.iter().zip(&mut scores) {
            let score = scores.remove(&id).ok_or_else(|| {
                OrchestratorError::bad_response(what, format!("sample {id} was not scored"))
            })?;
            heads.push(HeadOutputs {
                mu: score.heads.iter().map(|h| h.mu).collect(),
                sigma: score.heads.iter().map(|h| h.sigma).collect(),
            });
        }
        // One source: its heads are the uncertainty set, as they always were. With several,
        // `Fusion::apply` fills the set from `source_heads`.
        let primary = if heads.len() == 1 {
            heads.pop().expect("one source")
        } else {
            HeadOutputs {
                mu: Vec::new(),
                sigma: Vec::new(),
            }
        };
        let logprobs = extra
            .policy_logprobs
            .unwrap_or(if sample.policy_logprobs.is_empty() {
                sample.logprobs
            } else {
                sample.policy_logprobs
            });
        let check = |call: &str, what: &str, len: usize| {
            if len == sample.token_ids.len() {
                Ok(())
            } else {
                Err(OrchestratorError::bad_response(
                    call,
                    format!(
                        "sample {id}: {len} {what} for {} response tokens",
                        sample.token_ids.len()
                    ),
                ))
            }
        };
        check("actor", "policy logprobs", logprobs.len())?;
        check(
            "reference LogProbs",
            "reference logprobs",
            extra.ref_logprobs.len(),
        )?;
        check("critic Values", "values", extra.values.len())?;
        out.push(Rollout {
            prompt: req.prompts[index].text().to_string(),
            prompt_ids: sample.prompt_ids,
            response_ids: sample.token_ids,
            response_text: sample.text,
            finish_reason: sample.finish_reason,
            logprobs,
            ref_logprobs: extra.ref_logprobs,
            values: extra.values,
            heads_mu: primary.mu,
            heads_sigma: primary.sigma,
            source_heads: heads,
        });
    }
    Ok((
        out,
        Timings {
            generate_secs,
            score_tail_secs,
            generated_tokens,
        },
    ))
}

/// The reward service's view of a sample: its texts, or its ids for a prompt given as ids or
/// a response that decodes to nothing (e.g. an immediate EOS), which the service would
/// otherwise reject. Ids assume the reward model shares the actor's vocabulary.
fn reward_sample(id: &str, prompt: &PromptInput, s: &GeneratedSample, eos_id: i64) -> Sample {
    if matches!(prompt, PromptInput::Ids(_)) || s.text.trim().is_empty() {
        let mut ids: Vec<i64> = s.prompt_ids.iter().chain(&s.token_ids).copied().collect();
        if s.token_ids.last() != Some(&eos_id) {
            ids.push(eos_id);
        }
        Sample {
            id: id.into(),
            token_ids: ids,
            ..Default::default()
        }
    } else {
        Sample {
            id: id.into(),
            prompt: prompt.text().into(),
            response: s.text.clone(),
            token_ids: vec![],
        }
    }
}

/// One actor rank's share: streams its samples out as they finish; when the stream breaks,
/// asks again for the prompts that have not come back yet.
async fn generate_shard(
    client: rrlhf_proto::actor::v1::actor_service_client::ActorServiceClient<crate::clients::Svc>,
    retry_cfg: &RetrySettings,
    prompts: Vec<(usize, PromptInput)>,
    sampling: &Sampling,
    seed: u64,
    out: mpsc::UnboundedSender<Arrived>,
) -> Result<()> {
    let mut missing: BTreeMap<usize, PromptInput> = prompts.into_iter().collect();
    let mut backoff = Backoff::new(retry_cfg);
    while !missing.is_empty() {
        let order: Vec<usize> = missing.keys().copied().collect();
        let request = GenerateRequest {
            prompts: order
                .iter()
                .map(|i| missing[i].to_proto(i.to_string()))
                .collect(),
            sampling: Some(SamplingParams {
                temperature: sampling.temperature,
                top_k: sampling.top_k,
                top_p: sampling.top_p,
                max_new_tokens: sampling.max_new_tokens,
                min_new_tokens: sampling.min_new_tokens,
                stop_ids: vec![],
                seed: Some(seed.wrapping_add(backoff.attempts as u64)),
            }),
            samples_per_prompt: 1,
        };
        let mut c = client.clone();
        let result = async {
            let deadline = retry_cfg.deadlines.generate_secs;
            let mut stream = c
                .generate(with_deadline(request, deadline))
                .await?
                .into_inner();
            while let Some(sample) = stream.message().await? {
                let index = order[sample.prompt_index as usize];
                missing.remove(&index);
                let _ = out.send(Arrived { index, sample });
            }
            Ok::<(), Status>(())
        }
        .await;
        match result {
            Ok(()) if missing.is_empty() => return Ok(()),
            Ok(()) => {
                backoff
                    .wait("actor Generate", Status::unavailable("stream ended early"))
                    .await?
            }
            Err(e) if is_transient(&e) => backoff.wait("actor Generate", e).await?,
            Err(e) => return Err(OrchestratorError::rpc("actor Generate", e)),
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct Extras {
    ref_logprobs: Vec<f32>,
    values: Vec<f32>,
    policy_logprobs: Option<Vec<f32>>,
}

/// Reference log-probs, critic values (and the policy's own log-probs when asked) of a chunk
/// of samples: one call to each service, concurrently; one `Extras` per sequence, in order.
async fn enrich(
    services: &Services,
    retry_cfg: &RetrySettings,
    seqs: Vec<Sequence>,
    recompute_policy: bool,
) -> Result<Vec<Extras>> {
    let reference = retry(retry_cfg, "reference LogProbs", || {
        let req = LogProbsRequest {
            sequences: seqs.clone(),
        };
        let from_base = services
            .reference_from_actor_base
            .then(|| services.actor.any());
        let reference = services.reference.clone();
        let req = with_deadline(req, retry_cfg.deadlines.log_probs_secs);
        async move {
            match from_base {
                Some(mut actor) => actor.base_log_probs(req).await,
                None => reference.any().log_probs(req).await,
            }
        }
    });
    let critic = retry(retry_cfg, "critic Values", || {
        let mut c = services.critic.any();
        let req = ValuesRequest {
            sequences: seqs.clone(),
        };
        let req = with_deadline(req, retry_cfg.deadlines.values_secs);
        async move { c.values(req).await }
    });
    let policy = async {
        if !recompute_policy {
            return Ok(None);
        }
        let r = retry(retry_cfg, "actor LogProbs", || {
            let mut c = services.actor.any();
            let req = LogProbsRequest {
                sequences: seqs.clone(),
            };
            let req = with_deadline(req, retry_cfg.deadlines.log_probs_secs);
            async move { c.log_probs(req).await }
        })
        .await?;
        Ok::<_, OrchestratorError>(Some(r.into_inner().results))
    };
    let (reference, critic, policy) = tokio::try_join!(reference, critic, policy)?;
    // One answer per sequence, in order, or the call's response is bad.
    let check = |what: &str, ids: Vec<&str>| -> Result<()> {
        let expected: Vec<&str> = seqs.iter().map(|s| s.id.as_str()).collect();
        if ids == expected {
            Ok(())
        } else {
            Err(OrchestratorError::bad_response(
                what,
                format!(
                    "answered {} sequences ({:?}…) for {} ({:?}…)",
                    ids.len(),
                    ids.first(),
                    expected.len(),
                    expected.first()
                ),
            ))
        }
    };
    let reference = reference.into_inner().results;
    let critic = critic.into_inner().results;
    check(
        "reference LogProbs",
        reference.iter().map(|r| r.id.as_str()).collect(),
    )?;
    check(
        "critic Values",
        critic.iter().map(|r| r.id.as_str()).collect(),
    )?;
    if let Some(p) = &policy {
        check("actor LogProbs", p.iter().map(|r| r.id.as_str()).collect())?;
    }
    let mut policy = policy.map(|p| p.into_iter());
    Ok(reference
        .into_iter()
        .zip(critic)
        .map(|(r, c)| Extras {
            ref_logprobs: r.logprobs,
            values: c.values,
            policy_logprobs: policy.as_mut().and_then(|p| p.next()).map(|p| p.logprobs),
        })
        .collect())
}

/// Scores groups of samples as they come through one `ScoreStream` to replica `replica` of a
/// reward source (`what` names its calls in errors), a request per group; when the stream
/// breaks it is opened again (round-robin over replicas) and the samples still unanswered are
/// sent again.
async fn score_stream(
    pool: &RewardPool,
    what: &str,
    retry_cfg: &RetrySettings,
    replica: usize,
    mut incoming: mpsc::UnboundedReceiver<Vec<Sample>>,
) -> Result<HashMap<String, SampleScore>> {
    let mut pending: BTreeMap<String, Sample> = BTreeMap::new();
    let mut done: HashMap<String, SampleScore> = HashMap::new();
    let mut incoming_open = true;
    let mut backoff = Backoff::new(retry_cfg);
    let request = |samples: Vec<Sample>| ScoreRequest {
        samples,
        strategy: "nominal".into(),
        ..Default::default()
    };
    let mut first_attempt = true;
    loop {
        if !incoming_open && pending.is_empty() {
            return Ok(done);
        }
        let (tx, rx) = mpsc::unbounded_channel::<ScoreRequest>();
        for s in pending.values() {
            let _ = tx.send(request(vec![s.clone()]));
        }
        let mut client = if std::mem::take(&mut first_attempt) {
            pool.rank(replica)
        } else {
            pool.any()
        };
        let mut tx = Some(tx);
        let mut responses = match client
            .score_stream(with_deadline(
                tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
                retry_cfg.deadlines.score_secs,
            ))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(e) if is_transient(&e) => {
                backoff.wait(what, e).await?;
                continue;
            }
            Err(e) => return Err(OrchestratorError::rpc(what, e)),
        };
        let broken: Status = loop {
            if !incoming_open && pending.is_empty() {
                return Ok(done);
            }
            tokio::select! {
                next = incoming.recv(), if incoming_open => match next {
                    Some(group) => {
                        if let Some(t) = &tx {
                            let _ = t.send(request(group.clone()));
                        }
                        pending.extend(group.into_iter().map(|s| (s.id.clone(), s)));
                    }
                    None => {
                        incoming_open = false;
                        // Nothing more to send: closing our half lets the server finish.
                        if pending.is_empty() {
                            tx = None;
                        }
                    }
                },
                message = responses.message() => match message {
                    Ok(Some(resp)) => {
                        for score in resp.scores {
                            pending.remove(&score.id);
                            done.insert(score.id.clone(), score);
                        }
                    }
                    Ok(None) => break Status::unavailable("score stream ended early"),
                    Err(e) => break e,
                },
            }
        };
        drop(tx);
        if is_transient(&broken) {
            backoff.wait(what, broken).await?;
        } else {
            return Err(OrchestratorError::rpc(what, broken));
        }
    }
}
