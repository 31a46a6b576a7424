//! A run's lifecycle: created → running ⇄ paused → finished | stopped | failed. The run is one
//! tokio task that owns its state; the outside (REST API, CLI) talks to it through a
//! [`RunHandle`]: a control channel (pause, resume, stop, checkpoint, live changes of λ,
//! strategy and β — applied from the next step) and a shared snapshot of its progress.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rrlhf_ppo::RewardNorm;
use rrlhf_proto::actor::v1::InfoRequest;
use rrlhf_robust::Strategy;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use crate::checkpoint::{self, RunState};
use crate::clients::{Services, retry, with_deadline};
use crate::config::{OrchestratorConfig, RetrySettings};
use crate::error::{OrchestratorError, Result};
use crate::experience;
use crate::instances::Instances;
use crate::metrics::{self, StepMetrics};
use crate::prompts::{self, Cursor, PromptStream};
use crate::record;
use crate::samples::{SampleStore, ScoredSample};
use crate::sources::Fusion;
use crate::step;

pub use crate::patch::{Patch, apply_patch};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Created,
    Running,
    Paused,
    Finished,
    Stopped,
    Failed,
    /// Recorded as created, running or paused by an orchestrator that is gone (found on disk
    /// after a restart): nothing drives it until it is resumed.
    Interrupted,
}

impl RunStatus {
    /// Whether the run is over for good (an interrupted run is not: it can be resumed).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Finished | Self::Stopped | Self::Failed)
    }
}

pub type Reply<T> = oneshot::Sender<Result<T>>;

#[derive(Debug)]
pub enum Control {
    Pause(Reply<()>),
    Resume(Reply<()>),
    Stop(Reply<()>),
    Checkpoint(Reply<PathBuf>),
    Patch(Patch, Reply<()>),
}

/// What the outside can see of a run; also recorded in `<run dir>/run.json` at every change of
/// status and every step, so a restarted orchestrator can list the run ([`record`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    pub id: String,
    pub status: RunStatus,
    /// Steps completed.
    pub step: usize,
    pub steps: usize,
    pub dir: PathBuf,
    pub strategy: Strategy,
    pub beta: f64,
    /// Why the run failed, for display.
    pub error: Option<String>,
    pub last_checkpoint: Option<PathBuf>,
    pub last_metrics: Option<StepMetrics>,
}

#[derive(Debug, Clone)]
pub struct RunHandle {
    pub id: String,
    /// The actor and critic endpoints the run trains: no other live run may use them.
    pub trains: Arc<[String]>,
    info: Arc<Mutex<RunInfo>>,
    samples: Arc<Mutex<SampleStore>>,
    control: mpsc::UnboundedSender<Control>,
    status: watch::Receiver<RunStatus>,
}

impl RunHandle {
    pub fn info(&self) -> RunInfo {
        self.info.lock().expect("run info lock").clone()
    }

    /// The kept samples of `step` (default: the latest step), at most `limit`.
    pub fn samples(&self, step: Option<usize>, limit: usize) -> Result<Vec<ScoredSample>> {
        self.samples
            .lock()
            .expect("samples lock")
            .get(step, limit)
            .map_err(|e| OrchestratorError::invalid("step", e))
    }

    /// Sends a command and waits for the run's answer.
    pub async fn request<T>(&self, make: impl FnOnce(Reply<T>) -> Control) -> Result<T> {
        let ended = || OrchestratorError::Ended {
            id: self.id.clone(),
            status: None,
        };
        let (tx, rx) = oneshot::channel();
        self.control.send(make(tx)).map_err(|_| ended())?;
        rx.await.map_err(|_| ended())?
    }

    /// Resolves when the run reaches a terminal status, which it returns.
    pub async fn finished(&self) -> RunStatus {
        let mut rx = self.status.clone();
        loop {
            let s = *rx.borrow_and_update();
            if s.is_terminal() {
                return s;
            }
            if rx.changed().await.is_err() {
                return *rx.borrow();
            }
        }
    }
}

/// A known true reward of (prompt, response text), for testbeds where one exists: its batch
/// mean is recorded every step beside the proxy rewards (never trained on).
pub type GoldReward = Arc<dyn Fn(&str, &str) -> f32 + Send + Sync>;

/// How a run starts.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Continue from the run directory's latest checkpoint (a fresh start when there is none).
    pub resume: bool,
    /// Print each step's summary line on stderr.
    pub print_progress: bool,
    pub gold: Option<GoldReward>,
    /// A step whose batch turns out non-finite is rolled back and the run pauses with the
    /// reason (someone can fix the cause and resume it over the REST API), instead of failing.
    /// Only where something can resume it: a paused run with no REST API would wait forever.
    pub pause_on_bad_batch: bool,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("resume", &self.resume)
            .field("print_progress", &self.print_progress)
            .field("gold", &self.gold.is_some())
            .field("pause_on_bad_batch", &self.pause_on_bad_batch)
            .finish()
    }
}

/// The run directory of `cfg` (its id is derived from the time when empty).
pub fn run_dir(cfg: &mut OrchestratorConfig) -> PathBuf {
    if cfg.run.id.is_empty() {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        cfg.run.id = format!("run-{secs}");
    }
    cfg.run.out_dir.join(&cfg.run.id)
}

/// Validates `cfg` and starts the run as a task.
pub fn spawn_run(mut cfg: OrchestratorConfig, opts: RunOptions) -> Result<RunHandle> {
    cfg.validate()?;
    let dir = run_dir(&mut cfg);
    if !opts.resume && dir.join("metrics.jsonl").exists() {
        return Err(OrchestratorError::AlreadyExists {
            id: cfg.run.id.clone(),
            dir,
        });
    }
    let services = Services::connect(&cfg.endpoints)?;
    let lock = crate::lock::RunLock::acquire(&dir)?;
    let info = Arc::new(Mutex::new(RunInfo {
        id: cfg.run.id.clone(),
        status: RunStatus::Created,
        step: 0,
        steps: cfg.run.steps,
        dir: dir.clone(),
        strategy: cfg.objective.strategy,
        beta: cfg.ppo.kl.beta(),
        error: None,
        last_checkpoint: None,
        last_metrics: None,
    }));
    let (control, rx) = mpsc::unbounded_channel();
    let (status_tx, status) = watch::channel(RunStatus::Created);
    let samples = Arc::new(Mutex::new(SampleStore::new(
        cfg.rest.samples_per_step,
        cfg.rest.sample_steps,
    )));
    let handle = RunHandle {
        id: cfg.run.id.clone(),
        trains: cfg
            .endpoints
            .actor
            .iter()
            .chain(&cfg.endpoints.critic)
            .cloned()
            .collect(),
        info: info.clone(),
        samples: samples.clone(),
        control,
        status,
    };
    let mut runner = Runner {
        services,
        dir,
        info,
        status: status_tx,
        control: rx,
        opts,
        retry: cfg.retry.clone(),
        instances: None,
        samples,
        fusion: None,
    };
    tokio::spawn(async move {
        let outcome = runner.drive(cfg).await;
        let status = match outcome {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "run failed");
                runner.info.lock().expect("run info lock").error = Some(e.to_string());
                RunStatus::Failed
            }
        };
        // Released before the final status is published, so whoever waits for the end can
        // resume the run at once.
        drop(lock);
        runner.set_status(status);
    });
    Ok(handle)
}

/// Seed of step `step`: distinct per step and reproducible from the run seed alone.
pub fn step_seed(seed: u64, step: usize) -> u64 {
    rrlhf_util::rng::stream_seed(seed, step as u64 + 1)
}

struct Runner {
    services: Services,
    dir: PathBuf,
    info: Arc<Mutex<RunInfo>>,
    status: watch::Sender<RunStatus>,
    control: mpsc::UnboundedReceiver<Control>,
    opts: RunOptions,
    retry: RetrySettings,
    /// The actor and critic instances the run's weights live in (known once it started).
    instances: Option<Instances>,
    samples: Arc<Mutex<SampleStore>>,
    /// The reward sources fused into one uncertainty set (known once it started; `None`: one
    /// source, used as it is).
    fusion: Option<Fusion>,
}

/// What the control loop tells the step loop.
enum Next {
    Continue,
    Stop,
}

impl Runner {
    fn set_status(&self, s: RunStatus) {
        self.info.lock().expect("run info lock").status = s;
        self.record();
        let _ = self.status.send(s);
    }

    /// Writes the run's record (a failure is logged: the run itself goes on).
    fn record(&self) {
        let info = self.info.lock().expect("run info lock").clone();
        if let Err(e) = record::write(&self.dir, &info) {
            tracing::warn!(error = %e, "could not record the run's state");
        }
    }

    async fn drive(&mut self, cfg: OrchestratorConfig) -> Result<RunStatus> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| OrchestratorError::io(format!("creating {}", self.dir.display()), e))?;
        let retry_cfg = cfg.retry.clone();
        let eos_id = retry(&retry_cfg, "actor Info", || {
            let mut c = self.services.actor.rank(0);
            let req = with_deadline(InfoRequest {}, retry_cfg.deadlines.info_secs);
            async move { c.info(req).await }
        })
        .await?
        .into_inner()
        .eos_id;
        // A source that cannot be calibrated stops the run here, before any step.
        self.fusion = Fusion::resolve(&cfg.endpoints, &self.services, &retry_cfg).await?;
        let prompt_list = prompts::load(&cfg.prompts)?;

        let metrics_path = self.dir.join("metrics.jsonl");
        // Which process serves each actor and critic rank, and whether it holds its start
        // weights: the baseline for restart detection, and what a new run must reset.
        let seen = Instances::observe(&self.services, &retry_cfg).await?;
        let resumed = if self.opts.resume {
            checkpoint::latest(&self.dir)?
        } else {
            None
        };
        let resumed_at = resumed.as_ref().map(|(_, saved)| saved.step);
        let mut state = match resumed {
            Some((ckpt, state)) => {
                checkpoint::restore_services(&self.services, &retry_cfg, &ckpt).await?;
                metrics::truncate_after(&metrics_path, state.step)?;
                tracing::info!(step = state.step, dir = %ckpt.display(), "resumed");
                self.info.lock().expect("run info lock").last_checkpoint = Some(ckpt);
                // Steps and live settings come from the checkpoint; the total may be extended.
                RunState {
                    config: OrchestratorConfig {
                        run: crate::config::RunSettings {
                            steps: cfg.run.steps.max(state.config.run.steps),
                            ..state.config.run.clone()
                        },
                        endpoints: cfg.endpoints.clone(),
                        rest: cfg.rest.clone(),
                        ..state.config.clone()
                    },
                    ..state
                }
            }
            None => {
                // A new run (or one resumed before its first checkpoint: it starts over)
                // starts from the services' start weights, whatever trained them since.
                if checkpoint::restore_start(&self.services, &retry_cfg, &seen).await? {
                    tracing::warn!(
                        "the actor or critic held weights trained since it started: the start \
                         weights are back on both for this new run"
                    );
                }
                // Without the lines of steps nothing was saved of.
                if metrics_path.exists() {
                    metrics::truncate_after(&metrics_path, 0)?;
                }
                RunState {
                    step: 0,
                    cursor: Cursor::default(),
                    kl: cfg.ppo.kl,
                    reward_norm: RewardNorm::default(),
                    config: cfg.clone(),
                }
            }
        };
        let json = serde_json::to_vec_pretty(&state.config).expect("the config serialises");
        checkpoint::write_atomic(&self.dir.join("config.json"), &json)
            .map_err(|e| OrchestratorError::io("writing config.json", e))?;
        let mut stream = PromptStream::new(prompt_list, state.config.run.seed, state.cursor);
        // Loading a checkpoint or the start weights keeps every instance.
        self.instances = Some(seen);
        self.sync_info(&state);
        self.set_status(RunStatus::Running);

        let mut checkpointed_at = resumed_at;
        if resumed_at.is_none() && state.config.run.checkpoint_every > 0 {
            // The start, too, is a checkpoint: a service that restarts before the first regular
            // one can then be given back its start, and the run goes on instead of pausing.
            self.checkpoint(&state, &mut checkpointed_at).await?;
        }
        while state.step < state.config.run.steps {
            if let Next::Stop = self.handle_control(&mut state, false).await? {
                return self.stop(&state, checkpointed_at).await;
            }
            // Nothing may be trained on a service that lost its weights since the last look.
            if let Err(e) = self.ensure_same_instances().await {
                let next = self.after_restart(e, &mut state, &mut stream, &mut checkpointed_at);
                if let Next::Stop = next.await? {
                    return self.stop(&state, checkpointed_at).await;
                }
                continue;
            }
            let span =
                tracing::info_span!("ppo_step", run = %state.config.run.id, step = state.step + 1);
            let before = (state.kl, state.reward_norm, stream.cursor);
            let mut step = self
                .step(&mut state, &mut stream, eos_id)
                .instrument(span)
                .await
                .map_err(|e| OrchestratorError::Step {
                    step: state.step + 1,
                    error: Box::new(e),
                });
            // A step that failed, or that trained, may have met a restarted service (a lone
            // rank's calls are retried on whatever answers at its address): look again before
            // its results count.
            if let Err(e) = self.ensure_same_instances().await
                && (e.is_restart() || step.is_ok())
            {
                step = Err(e);
            }
            let m = match step {
                Ok(m) => m,
                Err(e) if e.is_restart() => {
                    let next = self.after_restart(e, &mut state, &mut stream, &mut checkpointed_at);
                    if let Next::Stop = next.await? {
                        return self.stop(&state, checkpointed_at).await;
                    }
                    continue;
                }
                Err(e) if e.is_divergence() => {
                    // The weights may hold NaN: they and the run go back to the latest
                    // checkpoint (as after a restart), then the run pauses with the reason.
                    // Without a checkpoint nothing can repair them: the run fails.
                    match self.recover(&e, &mut state, &mut stream).await? {
                        Some(at) => checkpointed_at = Some(at),
                        None => return Err(e),
                    }
                    match self.pause_for(e, &mut state).await? {
                        Next::Continue => continue,
                        Next::Stop => return self.stop(&state, checkpointed_at).await,
                    }
                }
                Err(e) if self.opts.pause_on_bad_batch && e.pauses_run() => {
                    // Nothing was trained: restoring the controller, the reward statistics and
                    // the prompt cursor undoes the step. The run waits, paused, for a fix.
                    (state.kl, state.reward_norm) = (before.0, before.1);
                    stream.rewind(before.2);
                    match self.pause_for(e, &mut state).await? {
                        Next::Continue => continue,
                        Next::Stop => return self.stop(&state, checkpointed_at).await,
                    }
                }
                Err(e) => return Err(e),
            };
            metrics::append(&metrics_path, &m)?;
            m.record(&state.config.run.id);
            if self.opts.print_progress {
                eprintln!("{}", m.line());
            }
            self.info.lock().expect("run info lock").last_metrics = Some(m);
            self.sync_info(&state);
            self.record();
            let every = state.config.run.checkpoint_every;
            if every > 0 && state.step % every == 0 {
                match self.checkpoint(&state, &mut checkpointed_at).await {
                    Ok(_) => {}
                    Err(e) if e.is_restart() => {
                        let next =
                            self.after_restart(e, &mut state, &mut stream, &mut checkpointed_at);
                        if let Next::Stop = next.await? {
                            return self.stop(&state, checkpointed_at).await;
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        if checkpointed_at != Some(state.step) {
            self.checkpoint(&state, &mut checkpointed_at).await?;
        }
        let all = metrics::read_all(&metrics_path)?;
        crate::report::write(&self.dir, &state.config, &all)?;
        Ok(RunStatus::Finished)
    }

    /// Ends a stopped run with a checkpoint of where it stands, unless one exists already or
    /// a trained service restarted (its weights are not the run's; `latest` stays as it is).
    async fn stop(&self, state: &RunState, checkpointed_at: Option<usize>) -> Result<RunStatus> {
        if checkpointed_at != Some(state.step) {
            match self.checkpoint(state, &mut None).await {
                Err(e) if e.is_restart() => {
                    tracing::warn!(error = %e, "stopped without a final checkpoint");
                }
                r => drop(r?),
            }
        }
        Ok(RunStatus::Stopped)
    }

    /// After a restart: the latest checkpoint reloaded, the run goes on; without one, it
    /// pauses (or fails, see [`Runner::pause_for`]).
    async fn after_restart(
        &mut self,
        e: OrchestratorError,
        state: &mut RunState,
        stream: &mut PromptStream,
        checkpointed_at: &mut Option<usize>,
    ) -> Result<Next> {
        match self.recover(&e, state, stream).await? {
            Some(at) => {
                *checkpointed_at = Some(at);
                Ok(Next::Continue)
            }
            None => self.pause_for(e, state).await,
        }
    }

    /// Pauses the run with `e` as the reason and waits for a command: resumed, the run goes
    /// on (`Next::Continue`); after a restart, the services it sees then are the ones it trains.
    async fn pause_for(&mut self, e: OrchestratorError, state: &mut RunState) -> Result<Next> {
        if !self.opts.pause_on_bad_batch {
            return Err(e);
        }
        tracing::warn!(error = %e, "run paused");
        self.info.lock().expect("run info lock").error = Some(e.to_string());
        self.set_status(RunStatus::Paused);
        let next = self.handle_control(state, true).await?;
        if let Next::Continue = next {
            self.info.lock().expect("run info lock").error = None;
            if e.is_restart() {
                // Resumed knowing that the restarted services hold their start weights.
                let retry_cfg = &state.config.retry;
                self.instances = Some(Instances::observe(&self.services, retry_cfg).await?);
            }
        }
        Ok(next)
    }

    /// Fails with [`OrchestratorError::Restarted`] when an actor or critic rank now runs
    /// another process instance than the one the run last knew.
    async fn ensure_same_instances(&self) -> Result<()> {
        match &self.instances {
            Some(known) => known.ensure_unchanged(&self.services, &self.retry).await,
            None => Ok(()),
        }
    }

    /// After a restart or a divergence (`cause`): loads the latest checkpoint into every actor
    /// and critic rank and rolls the run back to it — step, prompt cursor, KL controller,
    /// reward statistics, metrics — so the lost steps are taken again; live changes of λ and
    /// the strategy stay. Returns the step now checkpointed, or `None` when there is no
    /// checkpoint to reload (nothing changed).
    async fn recover(
        &mut self,
        cause: &OrchestratorError,
        state: &mut RunState,
        stream: &mut PromptStream,
    ) -> Result<Option<usize>> {
        let Some((ckpt, saved)) = checkpoint::latest(&self.dir)? else {
            return Ok(None);
        };
        tracing::warn!(error = %cause, step = saved.step, dir = %ckpt.display(),
            "reloading the latest checkpoint into the actor and critic");
        let counter = if cause.is_divergence() {
            "rrlhf_orchestrator_divergences_total"
        } else {
            "rrlhf_orchestrator_service_restarts_total"
        };
        ::metrics::counter!(counter).increment(1);
        let retry_cfg = state.config.retry.clone();
        // A service restarting again while the checkpoint loads would get its start weights
        // back: load until the instances are the same before and after.
        let instances = loop {
            let before = Instances::observe(&self.services, &retry_cfg).await?;
            checkpoint::restore_services(&self.services, &retry_cfg, &ckpt).await?;
            let after = Instances::observe(&self.services, &retry_cfg).await?;
            if before == after {
                break after;
            }
        };
        self.instances = Some(instances);
        metrics::truncate_after(&self.dir.join("metrics.jsonl"), saved.step)?;
        self.samples
            .lock()
            .expect("samples lock")
            .forget_after(saved.step);
        let config = state.config.clone();
        *state = RunState { config, ..saved };
        stream.rewind(state.cursor);
        self.info.lock().expect("run info lock").last_checkpoint = Some(ckpt);
        self.sync_info(state);
        Ok(Some(state.step))
    }

    fn sync_info(&self, state: &RunState) {
        let mut info = self.info.lock().expect("run info lock");
        info.step = state.step;
        info.steps = state.config.run.steps;
        info.strategy = state.config.objective.strategy;
        info.beta = state.kl.beta();
    }

    /// Saves a checkpoint of `state`, unless a trained service restarted (before or while it
    /// wrote: `save` compares the instances once the services have written, which covers
    /// both): its weights are not the run's.
    async fn checkpoint(&self, state: &RunState, at: &mut Option<usize>) -> Result<PathBuf> {
        let dir = checkpoint::save(
            &self.services,
            &state.config.retry,
            &self.dir,
            state,
            state.config.run.keep_checkpoints,
            self.instances.as_ref(),
        )
        .await?;
        *at = Some(state.step);
        self.info.lock().expect("run info lock").last_checkpoint = Some(dir.clone());
        Ok(dir)
    }

    /// Answers every pending command; while paused, waits for commands until resumed.
    async fn handle_control(&mut self, state: &mut RunState, mut paused: bool) -> Result<Next> {
        loop {
            let cmd = if paused {
                match self.control.recv().await {
                    Some(c) => c,
                    // Every handle is gone: nobody can resume the run; stop it cleanly.
                    None => return Ok(Next::Stop),
                }
            } else {
                match self.control.try_recv() {
                    Ok(c) => c,
                    Err(_) => return Ok(Next::Continue),
                }
            };
            match cmd {
                Control::Pause(reply) => {
                    paused = true;
                    self.set_status(RunStatus::Paused);
                    let _ = reply.send(Ok(()));
                }
                Control::Resume(reply) => {
                    if paused {
                        paused = false;
                        self.set_status(RunStatus::Running);
                        let _ = reply.send(Ok(()));
                    } else {
                        let _ = reply.send(Err(OrchestratorError::NotPaused));
                    }
                }
                Control::Stop(reply) => {
                    let _ = reply.send(Ok(()));
                    return Ok(Next::Stop);
                }
                Control::Checkpoint(reply) => {
                    let _ = reply.send(self.checkpoint(state, &mut None).await);
                }
                Control::Patch(patch, reply) => {
                    let r = apply_patch(state, &patch);
                    if r.is_ok() {
                        self.sync_info(state);
                    }
                    let _ = reply.send(r);
                }
            }
        }
    }

    async fn step(
        &mut self,
        state: &mut RunState,
        stream: &mut PromptStream,
        eos_id: i64,
    ) -> Result<StepMetrics> {
        let started = Instant::now();
        let cfg = state.config.clone();
        let seed = step_seed(cfg.run.seed, state.step);
        let prompts = stream.next_batch(cfg.run.batch_size);
        let (mut rollouts, timings) = experience::collect(
            &self.services,
            &cfg.retry,
            experience::Request {
                prompts: &prompts,
                sampling: &cfg.sampling,
                seed,
                eos_id,
                id_prefix: format!("s{}-", state.step + 1),
                sequences_per_call: cfg.run.sequences_per_call,
            },
        )
        .await?;
        if let Some(f) = &self.fusion {
            f.apply(&mut rollouts)?;
        }
        let strategy = cfg.objective.strategy;
        let prepared = step::prepare(
            &rollouts,
            strategy,
            cfg.objective.uncertainty_set,
            seed,
            &cfg.ppo,
            &mut state.kl,
            &mut state.reward_norm,
        )?;
        let sources = self
            .fusion
            .as_ref()
            .map_or_else(Vec::new, |f| f.stats(&rollouts, &prepared.rewards));
        let (rewards, kl, beta, response_length) = (
            prepared.rewards.clone(),
            prepared.kl,
            prepared.beta,
            prepared.response_length,
        );
        let train_started = Instant::now();
        let train = step::train(&self.services, &cfg.retry, prepared, &cfg.ppo, seed).await?;
        train.check_finite()?;
        let train_secs = train_started.elapsed().as_secs_f64();
        let gold = self.opts.gold.as_ref().map(|g| {
            let total: f64 = rollouts
                .iter()
                .map(|r| g(&r.prompt, &r.response_text) as f64)
                .sum();
            (total / rollouts.len().max(1) as f64) as f32
        });
        state.step += 1;
        state.cursor = stream.cursor;
        self.samples
            .lock()
            .expect("samples lock")
            .record(state.step, &rollouts);
        Ok(StepMetrics {
            step: state.step,
            strategy,
            rewards,
            sources,
            gold,
            kl,
            beta,
            train,
            response_length,
            generate_secs: timings.generate_secs,
            score_tail_secs: timings.score_tail_secs,
            train_secs,
            step_secs: started.elapsed().as_secs_f64(),
            generated_tokens_per_sec: timings.generated_tokens as f64
                / timings.generate_secs.max(1e-9),
        })
    }
}
