//! The model engine: one OS thread owns the reward model (libtorch tensors are not `Sync`) and
//! serves a bounded queue. Requests that arrive while it is busy are merged into one model batch
//! (up to `batch_max_sequences` sequences or `batch_max_tokens` padded tokens, waiting at most
//! `batch_wait_ms` for company), which is where the throughput under concurrency comes from.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use rrlhf_model::reward_model::{RewardMeta, RewardModel};
use rrlhf_model::scoring::{Overlong, RewardScorer};
use rrlhf_model::{Placement, TextTokenizer};
use rrlhf_robust::HeadOutputs;
use tokio::sync::oneshot;

use crate::config::RewardServiceConfig;
use crate::error::ServiceError;

/// Token sequences to score and where to send their head outputs.
struct Job {
    seqs: Vec<Vec<i64>>,
    reply: oneshot::Sender<Result<Vec<HeadOutputs>, String>>,
}

/// Counters describing the batching, for metrics and tests.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Model batches run (each may merge several requests).
    pub batches: AtomicU64,
    /// Requests served.
    pub requests: AtomicU64,
    /// Sequences scored.
    pub sequences: AtomicU64,
    /// Most requests merged into one batch so far.
    pub max_requests_per_batch: AtomicU64,
}

/// What the engine loaded, for `Info` and request validation.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub meta: RewardMeta,
    pub vocab_size: i64,
    pub model_id: String,
}

/// The async side's handle: cheap to clone, safe to share.
#[derive(Clone, Debug)]
pub struct EngineHandle {
    tx: SyncSender<Job>,
    capacity: usize,
    pub stats: Arc<EngineStats>,
    pub info: Arc<ModelInfo>,
}

impl EngineHandle {
    /// Scores already tokenised sequences; fails fast when the queue is full.
    pub async fn score(&self, seqs: Vec<Vec<i64>>) -> Result<Vec<HeadOutputs>, ServiceError> {
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(Job { seqs, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(ServiceError::Busy(self.capacity)),
            Err(TrySendError::Disconnected(_)) => return Err(ServiceError::EngineDown),
        }
        match rx.await {
            Ok(Ok(heads)) => Ok(heads),
            Ok(Err(message)) => Err(ServiceError::Model(rrlhf_model::ModelError::InvalidInput(
                message,
            ))),
            Err(_) => Err(ServiceError::EngineDown),
        }
    }
}

/// Loads the model and tokenizer on a new thread, runs a warm-up pass, and returns once the
/// engine can serve (or with the loading error).
pub fn spawn(cfg: &RewardServiceConfig) -> Result<(EngineHandle, TextTokenizer), ServiceError> {
    let (tx, rx) = sync_channel::<Job>(cfg.queue_capacity);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let stats = Arc::new(EngineStats::default());
    let thread_stats = stats.clone();
    let capacity = cfg.queue_capacity;
    let cfg = cfg.clone();
    std::thread::Builder::new()
        .name("reward-engine".into())
        .spawn(move || match load(&cfg) {
            Ok(scorer) => {
                let info = ModelInfo {
                    meta: scorer.model.meta.clone(),
                    vocab_size: scorer.model.cfg.vocab_size,
                    model_id: cfg.model.display().to_string(),
                };
                let _ = ready_tx.send(Ok((info, scorer.tokenizer.clone())));
                serve(scorer, rx, &cfg, &thread_stats);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
        })
        .map_err(|e| {
            ServiceError::invalid("engine", format!("cannot start the engine thread: {e}"))
        })?;
    let (info, tokenizer) = ready_rx.recv().map_err(|_| ServiceError::EngineDown)??;
    let handle = EngineHandle {
        tx,
        capacity,
        stats,
        info: Arc::new(info),
    };
    Ok((handle, tokenizer))
}

fn load(cfg: &RewardServiceConfig) -> Result<RewardScorer, ServiceError> {
    let placement = Placement::parse(&cfg.device, &cfg.dtype)?;
    rrlhf_model::device::set_threads(cfg.threads);
    let model = RewardModel::from_dir(&cfg.model, placement)?;
    let tokenizer = TextTokenizer::load(Path::new(&cfg.model))?;
    if tokenizer.vocab_size() as i64 > model.cfg.vocab_size {
        return Err(ServiceError::invalid(
            "model",
            "the tokenizer has more tokens than the model's vocabulary",
        ));
    }
    let overlong = if cfg.overlong == "truncate" {
        Overlong::Truncate
    } else {
        Overlong::Reject
    };
    let scorer = RewardScorer {
        model,
        tokenizer,
        max_len: cfg.max_length,
        batch_size: cfg.batch_max_sequences,
        overlong,
    };
    // Warm-up: the first forward pass allocates and picks kernels; health stays NOT_SERVING
    // until it has run.
    let warm = scorer.encode(&[("warm-up".to_string(), " ok".to_string())])?;
    scorer.heads_of_ids(&warm)?;
    Ok(scorer)
}

fn serve(scorer: RewardScorer, rx: Receiver<Job>, cfg: &RewardServiceConfig, stats: &EngineStats) {
    let wait = Duration::from_millis(cfg.batch_wait_ms);
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let (mut seqs, mut longest) = (jobs[0].seqs.len(), longest_of(&jobs[0].seqs));
        let deadline = Instant::now() + wait;
        while seqs < cfg.batch_max_sequences && seqs * longest < cfg.batch_max_tokens {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(job) => {
                    seqs += job.seqs.len();
                    longest = longest.max(longest_of(&job.seqs));
                    jobs.push(job);
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        let all: Vec<Vec<i64>> = jobs.iter().flat_map(|j| j.seqs.iter().cloned()).collect();
        let result = scorer.heads_of_ids(&all).map_err(|e| e.to_string());
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .requests
            .fetch_add(jobs.len() as u64, Ordering::Relaxed);
        stats
            .sequences
            .fetch_add(all.len() as u64, Ordering::Relaxed);
        stats
            .max_requests_per_batch
            .fetch_max(jobs.len() as u64, Ordering::Relaxed);
        let mut heads = result.map(|h| h.into_iter());
        for job in jobs {
            let part = match &mut heads {
                Ok(it) => Ok(it.by_ref().take(job.seqs.len()).collect()),
                Err(e) => Err(e.clone()),
            };
            let _ = job.reply.send(part);
        }
    }
    tracing::info!("reward engine stopped");
}

fn longest_of(seqs: &[Vec<i64>]) -> usize {
    seqs.iter().map(Vec::len).max().unwrap_or(0)
}
