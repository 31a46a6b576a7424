//! The model-engine pattern every service uses: one OS thread owns the model (libtorch tensors
//! are `Send` but not `Sync`, and their ops must not race), fed by a bounded queue. Items of
//! requests that arrive while the thread is busy are merged into one batch — up to
//! `max_items` items or `max_cost` cost units (e.g. padded tokens), waiting at most `max_wait`
//! for company after the first request — and the results are handed back per request.
//!
//! A request whose caller has gone by the time its batch is formed (its deadline passed, the
//! client hung up: the server then drops the handler, and with it the reply's receiver) is
//! dropped without running, and counted (`rrlhf_engine_abandoned_requests_total`), so a burst
//! of abandoned large calls cannot keep a later small one waiting. A batch already running
//! stops between its steps (decoding steps, scoring passes) once every one of its callers has
//! gone: the model asks [`rrlhf_util::cancel::abandoned`].
//!
//! A panic while running a batch (a libtorch error surfacing as a Rust panic, a bug) is caught:
//! every request of that batch gets [`EngineError::Panicked`] (INTERNAL, with the panic's
//! message), and [`PanicPolicy`] decides what happens next. A frozen model cannot be left
//! half-changed by a failed forward pass, so it keeps serving; a model that was half-way through
//! an optimizer step may be, so its engine stops: later calls get UNAVAILABLE and
//! [`Engine::stopped`] fires, which the server turns into health NOT_SERVING so the supervisor
//! (Kubernetes, `rrlhf launch`) restarts the process from its last checkpoint.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

mod arrival;
pub use arrival::run_in_arrival_order;

/// How requests are merged.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    pub max_items: usize,
    pub max_cost: usize,
    pub max_wait: Duration,
    /// Requests that may wait; beyond it submissions fail with [`EngineError::Busy`].
    pub queue_capacity: usize,
    /// Cost units (tokens) that may wait, each item counted up to `max_cost` (a request that
    /// never merges counts as one full batch); a request that would go beyond it fails at once
    /// with [`EngineError::Overloaded`] (unless the queue is empty), so admission follows the
    /// work queued, not the number of calls.
    pub max_queued_cost: usize,
    /// A request that waited longer than this before its batch formed is answered
    /// [`EngineError::Overloaded`] instead of running late.
    pub max_queue_wait: Duration,
    /// What the engine does after a batch panicked.
    pub on_panic: PanicPolicy,
    /// Merge concurrent requests into one batch (throughput), or run each request as its own
    /// batch: then a request's results do not depend on what else arrived with it (batch
    /// shapes change floating-point summation order), so runs reproduce bit for bit.
    pub merge_requests: bool,
}

/// What an engine does after a batch panicked (its requests always get INTERNAL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanicPolicy {
    /// The model is read-only (reward, reference): the same worker takes the next batch.
    KeepServing,
    /// The model may be half-updated (actor, critic): the engine stops, health turns
    /// NOT_SERVING, and later calls are UNAVAILABLE until the process is restarted.
    Stop,
}

/// Counters describing the batching, for metrics and tests.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Batches run (each may merge several requests).
    pub batches: AtomicU64,
    pub requests: AtomicU64,
    pub items: AtomicU64,
    /// Most requests merged into one batch so far.
    pub max_requests_per_batch: AtomicU64,
    /// Batches that panicked.
    pub panics: AtomicU64,
    /// Requests dropped unrun because their caller had gone.
    pub abandoned: AtomicU64,
    /// Requests refused by the queued-cost bound or answered after waiting too long.
    pub overloaded: AtomicU64,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum EngineError {
    #[error("the engine queue is full ({0} requests waiting); retry later")]
    Busy(usize),
    /// Too much work queued, or queued too long: the message says which, and when to retry.
    #[error("{0}")]
    Overloaded(String),
    #[error("the model engine is not running")]
    Down,
    /// The batch failed; the message comes from the model.
    #[error("{0}")]
    Failed(String),
    /// Running the batch panicked; the message is the panic's.
    #[error("the model engine panicked: {0}")]
    Panicked(String),
}

/// Runs one merged batch: one output per input item, or a message saying why not.
type RunBatch<M, I, O> = dyn Fn(&M, &[I]) -> Result<Vec<O>, String>;

struct Job<I, O> {
    items: Vec<I>,
    reply: oneshot::Sender<Result<Vec<O>, EngineError>>,
    /// The items' share of the queued-cost bound.
    cost: usize,
    enqueued: Instant,
}

/// An item's cost: what `Engine::spawn`'s caller says it is.
type Cost<I> = dyn Fn(&I) -> usize + Send + Sync;

/// The async side's handle: cheap to clone, safe to share.
pub struct Engine<I, O> {
    tx: SyncSender<Job<I, O>>,
    capacity: usize,
    cost: Arc<Cost<I>>,
    /// Cost of the requests in the queue (added on submit, removed when the engine takes them).
    queued: Arc<AtomicUsize>,
    max_cost: usize,
    max_queued_cost: usize,
    pub stats: Arc<EngineStats>,
    /// Turns `true` when the engine thread has stopped serving.
    stopped: watch::Receiver<bool>,
}

impl<I, O> Clone for Engine<I, O> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            capacity: self.capacity,
            cost: self.cost.clone(),
            queued: self.queued.clone(),
            max_cost: self.max_cost,
            max_queued_cost: self.max_queued_cost,
            stats: self.stats.clone(),
            stopped: self.stopped.clone(),
        }
    }
}

impl<I, O> std::fmt::Debug for Engine<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("capacity", &self.capacity)
            .field("stats", &self.stats)
            .finish()
    }
}

impl<I: Send + 'static, O: Send + 'static> Engine<I, O> {
    /// Starts the engine thread: `load` builds the model there (and should run a warm-up
    /// pass); `run` turns a merged batch of items into one output per item; `cost` is an
    /// item's share of `max_cost`. Returns once `load` finished, with what it reported.
    pub fn spawn<M, R, E>(
        name: &str,
        cfg: BatchConfig,
        load: impl FnOnce() -> Result<(M, R), E> + Send + 'static,
        run: impl Fn(&M, &[I]) -> Result<Vec<O>, String> + Send + 'static,
        cost: impl Fn(&I) -> usize + Send + Sync + 'static,
    ) -> Result<(Self, R), E>
    where
        M: 'static,
        R: Send + 'static,
        E: Send + 'static + From<EngineError>,
    {
        let (tx, rx) = sync_channel::<Job<I, O>>(cfg.queue_capacity);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<R, E>>();
        let (stopped_tx, stopped) = watch::channel(false);
        let stats = Arc::new(EngineStats::default());
        let thread_stats = stats.clone();
        let cost: Arc<Cost<I>> = Arc::new(cost);
        let thread_cost = cost.clone();
        let queued = Arc::new(AtomicUsize::new(0));
        let thread_queued = queued.clone();
        let thread_name = name.to_string();
        std::thread::Builder::new()
            .name(thread_name.clone())
            .spawn(move || {
                match catch_unwind(AssertUnwindSafe(load)) {
                    Ok(Ok((model, report))) => {
                        let _ = ready_tx.send(Ok(report));
                        let queue = Queue {
                            rx,
                            queued: &thread_queued,
                        };
                        serve(
                            &model,
                            queue,
                            cfg,
                            &thread_stats,
                            &run,
                            &*thread_cost,
                            &thread_name,
                        );
                        tracing::info!(engine = thread_name, "engine stopped");
                    }
                    Ok(Err(e)) => {
                        let _ = ready_tx.send(Err(e));
                    }
                    Err(panic) => {
                        let msg = panic_message(panic.as_ref());
                        let _ = ready_tx.send(Err(E::from(EngineError::Panicked(msg))));
                    }
                }
                let _ = stopped_tx.send(true);
            })
            .map_err(|_| E::from(EngineError::Down))?;
        let report = ready_rx.recv().map_err(|_| E::from(EngineError::Down))??;
        Ok((
            Self {
                tx,
                capacity: cfg.queue_capacity,
                cost,
                queued,
                max_cost: cfg.max_cost,
                max_queued_cost: cfg.max_queued_cost,
                stats,
                stopped,
            },
            report,
        ))
    }

    /// Runs `items` (possibly merged with other requests' items); fails fast when the queue
    /// is full, in requests or in queued cost.
    pub async fn submit(&self, items: Vec<I>) -> Result<Vec<O>, EngineError> {
        let cost: usize = items
            .iter()
            .map(|i| (self.cost)(i).min(self.max_cost))
            .sum();
        let before = self.queued.fetch_add(cost, Ordering::SeqCst);
        if before > 0 && before + cost > self.max_queued_cost {
            self.queued.fetch_sub(cost, Ordering::SeqCst);
            self.stats.overloaded.fetch_add(1, Ordering::Relaxed);
            return Err(EngineError::Overloaded(format!(
                "the engine has {before} tokens of work queued; this request's {cost} would \
                 exceed the bound of {} (engine.queue_max_tokens): retry with backoff",
                self.max_queued_cost
            )));
        }
        let (reply, rx) = oneshot::channel();
        let job = Job {
            items,
            reply,
            cost,
            enqueued: Instant::now(),
        };
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(e) => {
                self.queued.fetch_sub(cost, Ordering::SeqCst);
                return Err(match e {
                    TrySendError::Full(_) => EngineError::Busy(self.capacity),
                    TrySendError::Disconnected(_) => EngineError::Down,
                });
            }
        }
        rx.await.unwrap_or(Err(EngineError::Down))
    }
}

/// The engine thread's end of the queue, and the queued cost it releases as it takes jobs.
struct Queue<'a, I, O> {
    rx: Receiver<Job<I, O>>,
    queued: &'a AtomicUsize,
}

impl<I, O> Queue<'_, I, O> {
    fn taken(&self, job: Job<I, O>) -> Job<I, O> {
        self.queued.fetch_sub(job.cost, Ordering::SeqCst);
        job
    }
}

fn serve<M, I, O: 'static>(
    model: &M,
    queue: Queue<'_, I, O>,
    cfg: BatchConfig,
    stats: &EngineStats,
    run: &RunBatch<M, I, O>,
    cost: &dyn Fn(&I) -> usize,
    name: &str,
) {
    // Install the recorder before creating handles: handles bind to the recorder of their time.
    crate::metrics::handle();
    let engine = name.to_string();
    let batch_items = metrics::histogram!("rrlhf_engine_batch_items", "engine" => engine.clone());
    let batch_requests =
        metrics::histogram!("rrlhf_engine_batch_requests", "engine" => engine.clone());
    let items_total = metrics::counter!("rrlhf_engine_items_total", "engine" => engine.clone());
    let failures =
        metrics::counter!("rrlhf_engine_failed_batches_total", "engine" => engine.clone());
    let abandoned =
        metrics::counter!("rrlhf_engine_abandoned_requests_total", "engine" => engine.clone());
    let overloaded =
        metrics::counter!("rrlhf_engine_overloaded_requests_total", "engine" => engine);
    // Whether a request is not to run: its caller is gone (nobody would read its result), or it
    // waited past the bound (it is answered so, and its caller backs off).
    let skip = |job: Job<I, O>| -> Option<Job<I, O>> {
        if job.reply.is_closed() {
            stats.abandoned.fetch_add(1, Ordering::Relaxed);
            abandoned.increment(1);
            return None;
        }
        let waited = job.enqueued.elapsed();
        if waited > cfg.max_queue_wait {
            stats.overloaded.fetch_add(1, Ordering::Relaxed);
            overloaded.increment(1);
            let _ = job.reply.send(Err(EngineError::Overloaded(format!(
                "waited {} ms in the engine queue, beyond its bound of {} ms \
                 (engine.queue_max_wait_ms): retry with backoff",
                waited.as_millis(),
                cfg.max_queue_wait.as_millis()
            ))));
            return None;
        }
        Some(job)
    };
    while let Ok(first) = queue.rx.recv() {
        let Some(first) = skip(queue.taken(first)) else {
            continue;
        };
        let batch_cost = |jobs: &[Job<I, O>]| -> (usize, usize) {
            let items: usize = jobs.iter().map(|j| j.items.len()).sum();
            let widest = jobs
                .iter()
                .flat_map(|j| j.items.iter().map(cost))
                .max()
                .unwrap_or(0);
            (items, items * widest)
        };
        let mut jobs = vec![first];
        let deadline = Instant::now() + cfg.max_wait;
        loop {
            // Unmerged, each request is its own batch: its results never depend on what
            // arrived with it.
            let (items, padded) = batch_cost(&jobs);
            if !cfg.merge_requests || items >= cfg.max_items || padded >= cfg.max_cost {
                break;
            }
            match queue
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(job) => jobs.extend(skip(queue.taken(job))),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        let sizes: Vec<usize> = jobs.iter().map(|j| j.items.len()).collect();
        let mut all = Vec::with_capacity(sizes.iter().sum());
        let mut replies = Vec::with_capacity(jobs.len());
        for job in jobs {
            all.extend(job.items);
            replies.push(job.reply);
        }
        // While the batch runs, the model may ask between its steps whether any caller still
        // waits (`rrlhf_util::cancel::abandoned`), and stop early when none does.
        let replies = std::rc::Rc::new(replies);
        let waiting = replies.clone();
        let still_wanted = move || waiting.iter().any(|r| !r.is_closed());
        let ran = catch_unwind(AssertUnwindSafe(|| {
            rrlhf_util::cancel::with_probe(still_wanted, || run(model, &all))
        }));
        let replies = std::rc::Rc::try_unwrap(replies)
            .unwrap_or_else(|_| unreachable!("the probe is dropped when the batch ends"));
        let (result, panicked) = match ran {
            Ok(r) => (r.map_err(EngineError::Failed), false),
            Err(panic) => {
                let msg = panic_message(panic.as_ref());
                tracing::error!(engine = name, panic = %msg, "a batch panicked");
                stats.panics.fetch_add(1, Ordering::Relaxed);
                (Err(EngineError::Panicked(msg)), true)
            }
        };
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .requests
            .fetch_add(replies.len() as u64, Ordering::Relaxed);
        stats.items.fetch_add(all.len() as u64, Ordering::Relaxed);
        stats
            .max_requests_per_batch
            .fetch_max(replies.len() as u64, Ordering::Relaxed);
        batch_items.record(all.len() as f64);
        batch_requests.record(replies.len() as f64);
        items_total.increment(all.len() as u64);
        if result.is_err() {
            if replies.iter().all(|r| r.is_closed()) {
                // Stopped (or failed) with nobody left to tell: abandoned work, not a failure.
                stats
                    .abandoned
                    .fetch_add(replies.len() as u64, Ordering::Relaxed);
                abandoned.increment(replies.len() as u64);
            } else {
                failures.increment(1);
            }
        }
        match result {
            Ok(outputs) if outputs.len() == all.len() => {
                let mut outputs = outputs.into_iter();
                for (reply, n) in replies.into_iter().zip(sizes) {
                    let _ = reply.send(Ok(outputs.by_ref().take(n).collect()));
                }
            }
            Ok(outputs) => {
                let e = EngineError::Failed(format!(
                    "the model returned {} outputs for {} inputs",
                    outputs.len(),
                    all.len()
                ));
                replies
                    .into_iter()
                    .for_each(|r| drop(r.send(Err(e.clone()))));
            }
            Err(e) => replies
                .into_iter()
                .for_each(|r| drop(r.send(Err(e.clone())))),
        }
        if panicked && cfg.on_panic == PanicPolicy::Stop {
            tracing::error!(
                engine = name,
                "stopping the engine: its model may be half-updated"
            );
            // Requests already queued get UNAVAILABLE when `rx` drops with them.
            return;
        }
    }
}

/// An engine handle that can say when its engine thread has stopped.
pub trait Stoppable {
    /// Resolves once the engine thread has stopped serving (after a panic under
    /// [`PanicPolicy::Stop`], or when every handle is gone).
    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static;
}

impl<I, O> Stoppable for Engine<I, O> {
    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.stopped.clone();
        async move {
            let _ = rx.wait_for(|&stopped| stopped).await;
        }
    }
}

/// The text of a panic payload (`panic!("…")` carries a `&str` or a `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct LoadError(EngineError);

    impl From<EngineError> for LoadError {
        fn from(e: EngineError) -> Self {
            Self(e)
        }
    }

    fn cfg(wait_ms: u64) -> BatchConfig {
        BatchConfig {
            max_items: 64,
            max_cost: 1 << 20,
            max_wait: Duration::from_millis(wait_ms),
            queue_capacity: 64,
            max_queued_cost: usize::MAX,
            max_queue_wait: Duration::from_secs(600),
            on_panic: PanicPolicy::KeepServing,
            merge_requests: true,
        }
    }

    /// An engine that runs unmerged batches and blocks on item 0 until `release` gets a
    /// message; items cost their value.
    fn gated(cfg: BatchConfig) -> (Engine<i64, i64>, std::sync::mpsc::Sender<()>) {
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = std::sync::Mutex::new(gate);
        let (engine, ()) = Engine::<i64, i64>::spawn(
            "t",
            BatchConfig {
                merge_requests: false,
                ..cfg
            },
            || Ok::<_, LoadError>(((), ())),
            move |_, xs| {
                if xs.contains(&0) {
                    gate.lock().unwrap().recv().unwrap();
                }
                Ok(xs.to_vec())
            },
            |&x| x as usize,
        )
        .unwrap();
        (engine, release)
    }

    /// Admission by queued work: with 0 running, requests queue up to the cost bound; the next
    /// is refused at once (RESOURCE_EXHAUSTED with a retry hint), and one that waited past the
    /// wait bound is answered so instead of running.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn admission_follows_queued_work_and_waits_are_bounded() {
        let (engine, release) = gated(BatchConfig {
            max_queued_cost: 100,
            max_queue_wait: Duration::from_millis(200),
            ..cfg(0)
        });
        let submit = |x: i64| {
            let e = engine.clone();
            tokio::spawn(async move { e.submit(vec![x]).await })
        };
        let busy = submit(0);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let waiting = submit(60);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let refused = engine.submit(vec![50]).await.unwrap_err();
        assert!(
            matches!(&refused, EngineError::Overloaded(m) if m.contains("60 tokens of work queued")),
            "{refused:?}"
        );
        let status = tonic::Status::from(refused);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.metadata().get("retry-after-ms").is_some());
        // A request within the bound still queues; then the wait bound passes for both.
        let small = submit(30);
        tokio::time::sleep(Duration::from_millis(250)).await;
        release.send(()).unwrap();
        assert_eq!(busy.await.unwrap().unwrap(), vec![0]);
        for late in [waiting, small] {
            let e = late.await.unwrap().unwrap_err();
            assert!(
                matches!(&e, EngineError::Overloaded(m) if m.contains("in the engine queue")),
                "{e:?}"
            );
        }
        assert_eq!(engine.stats.overloaded.load(Ordering::Relaxed), 3);
        // The queue is empty again: work is admitted and runs.
        assert_eq!(engine.submit(vec![90]).await.unwrap(), vec![90]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn merges_concurrent_requests_and_returns_each_its_own() {
        let (engine, hello) = Engine::<i64, i64>::spawn(
            "test",
            cfg(50),
            || Ok::<_, LoadError>((10i64, "ready")),
            |offset, xs| Ok(xs.iter().map(|x| x + offset).collect()),
            |_| 1,
        )
        .unwrap();
        assert_eq!(hello, "ready");
        let tasks: Vec<_> = (0..8i64)
            .map(|i| {
                let e = engine.clone();
                tokio::spawn(async move { e.submit(vec![i, 100 + i]).await })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(
                t.await.unwrap().unwrap(),
                vec![10 + i as i64, 110 + i as i64]
            );
        }
        assert!(engine.stats.max_requests_per_batch.load(Ordering::Relaxed) > 1);
    }

    #[tokio::test]
    async fn failures_and_load_errors_are_reported() {
        let (engine, ()) = Engine::<i64, i64>::spawn(
            "t",
            cfg(0),
            || Ok::<_, LoadError>(((), ())),
            |_, _| Err("boom".into()),
            |_| 1,
        )
        .unwrap();
        assert_eq!(
            engine.submit(vec![1]).await.unwrap_err(),
            EngineError::Failed("boom".into())
        );
        let err = Engine::<i64, i64>::spawn(
            "t",
            cfg(0),
            || Err::<((), ()), _>(LoadError(EngineError::Failed("no weights".into()))),
            |_, _| Ok(vec![]),
            |_| 1,
        )
        .unwrap_err();
        assert_eq!(err, LoadError(EngineError::Failed("no weights".into())));
    }

    /// A batch that panics on a negative item: (the engine under `policy`, a request that panics).
    fn panicking(policy: PanicPolicy) -> Engine<i64, i64> {
        let cfg = BatchConfig {
            on_panic: policy,
            ..cfg(0)
        };
        let (engine, ()) = Engine::<i64, i64>::spawn(
            "t",
            cfg,
            || Ok::<_, LoadError>(((), ())),
            |_, xs| {
                assert!(xs.iter().all(|&x| x >= 0), "injected panic on {xs:?}");
                Ok(xs.to_vec())
            },
            |_| 1,
        )
        .unwrap();
        engine
    }

    #[tokio::test]
    async fn a_panic_is_internal_and_a_read_only_engine_keeps_serving() {
        let engine = panicking(PanicPolicy::KeepServing);
        let err = engine.submit(vec![-1]).await.unwrap_err();
        assert!(
            matches!(&err, EngineError::Panicked(m) if m.contains("injected panic on [-1]")),
            "{err:?}"
        );
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(status.message().contains("injected panic"), "{status:?}");
        assert_eq!(engine.submit(vec![2, 3]).await.unwrap(), vec![2, 3]);
        assert_eq!(engine.stats.panics.load(Ordering::Relaxed), 1);
        let not_yet = tokio::time::timeout(Duration::from_millis(50), engine.stopped()).await;
        assert!(not_yet.is_err(), "a read-only engine does not stop");
    }

    /// A request whose caller gave up while it waited is dropped unrun and counted; the
    /// engine serves the next one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_whose_caller_is_gone_is_dropped() {
        let (engine, release) = gated(cfg(0));
        let busy = {
            let e = engine.clone();
            tokio::spawn(async move { e.submit(vec![0]).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        // These callers give up (a deadline) while the engine is busy.
        for i in 1..=3 {
            let gave_up =
                tokio::time::timeout(Duration::from_millis(10), engine.submit(vec![i])).await;
            assert!(gave_up.is_err(), "request {i} cannot have run yet");
        }
        release.send(()).unwrap();
        assert_eq!(busy.await.unwrap().unwrap(), vec![0]);
        assert_eq!(engine.submit(vec![7]).await.unwrap(), vec![7]);
        assert_eq!(engine.stats.abandoned.load(Ordering::Relaxed), 3);
        assert_eq!(
            engine.stats.items.load(Ordering::Relaxed),
            2,
            "only 0 and 7 ran"
        );
    }

    /// A running batch of many steps whose caller gives up stops between its steps (it ran to
    /// the end before, holding the model for work nobody read), counted as abandoned; one whose
    /// caller waits runs to the end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_running_batch_stops_when_its_callers_are_gone() {
        let steps_run = Arc::new(AtomicU64::new(0));
        let counted = steps_run.clone();
        let (engine, ()) = Engine::<i64, i64>::spawn(
            "t",
            cfg(0),
            || Ok::<_, LoadError>(((), ())),
            move |_, xs| {
                // 200 steps of 5 ms, asking between them whether anyone still waits.
                for _ in 0..200 {
                    if rrlhf_util::cancel::abandoned() {
                        return Err("stopped".into());
                    }
                    counted.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(xs.to_vec())
            },
            |_| 1,
        )
        .unwrap();
        let gave_up =
            tokio::time::timeout(Duration::from_millis(100), engine.submit(vec![1])).await;
        assert!(gave_up.is_err(), "a second's work cannot be done in 100 ms");
        // The next request waits for the engine: it runs once the abandoned batch has stopped.
        let started = std::time::Instant::now();
        assert_eq!(engine.submit(vec![2]).await.unwrap(), vec![2]);
        let abandoned_steps = steps_run.load(Ordering::Relaxed) - 200;
        assert!(
            abandoned_steps < 100,
            "the abandoned batch ran {abandoned_steps} of its 200 steps"
        );
        assert!(started.elapsed() < Duration::from_millis(1900));
        assert_eq!(engine.stats.abandoned.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_panic_stops_a_training_engine() {
        let engine = panicking(PanicPolicy::Stop);
        assert!(matches!(
            engine.submit(vec![-1]).await,
            Err(EngineError::Panicked(_))
        ));
        tokio::time::timeout(Duration::from_secs(5), engine.stopped())
            .await
            .expect("the engine reports that it stopped");
        assert_eq!(engine.submit(vec![1]).await, Err(EngineError::Down));
    }

    #[test]
    fn a_panic_while_loading_is_a_load_error() {
        let err = Engine::<i64, i64>::spawn(
            "t",
            cfg(0),
            || -> Result<((), ()), LoadError> { panic!("no device") },
            |_, xs| Ok(xs.to_vec()),
            |_| 1,
        )
        .unwrap_err();
        assert_eq!(err, LoadError(EngineError::Panicked("no device".into())));
    }
}

impl From<EngineError> for tonic::Status {
    /// A full queue asks the caller to back off; a stopped engine is transient (shutdown); a
    /// failed batch is the server's fault.
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Busy(_) | EngineError::Overloaded(_) => {
                let mut status = tonic::Status::resource_exhausted(e.to_string());
                // A hint for clients that read it: the first backoff to try.
                status
                    .metadata_mut()
                    .insert("retry-after-ms", tonic::metadata::MetadataValue::from(100));
                status
            }
            EngineError::Down => tonic::Status::unavailable(e.to_string()),
            EngineError::Failed(msg) => tonic::Status::internal(format!("model error: {msg}")),
            EngineError::Panicked(_) => tonic::Status::internal(e.to_string()),
        }
    }
}

/// Why a model could not be loaded (or its engine started), for services' `load` functions.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(pub String);

impl LoadError {
    /// A loading failure with `e`'s message (the model's, the tokenizer's, …).
    pub fn of(e: impl std::fmt::Display) -> Self {
        Self(e.to_string())
    }
}

impl From<EngineError> for LoadError {
    fn from(e: EngineError) -> Self {
        Self(e.to_string())
    }
}
