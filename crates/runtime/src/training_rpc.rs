//! What every training service (actor, critic) shares: the training work its engine runs
//! besides its forward passes ([`TrainWork`] → [`TrainDone`], dispatched once by
//! [`Trainable::run_training`]) and the RPCs that send it — `Train`'s engine call,
//! `SaveCheckpoint` and `LoadCheckpoint` — with the same validation and error mapping, whatever
//! the service's job and statistics types.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rrlhf_proto::common::v1::{
    LoadCheckpointRequest, LoadCheckpointResponse, SaveCheckpointRequest, SaveCheckpointResponse,
};
use tonic::{Response, Status};

use crate::engine::{Engine, EngineError};
use crate::validate::{invalid, unexpected};

/// Training work for a model whose update job is `J`.
#[derive(Debug)]
pub enum TrainWork<J> {
    Train(Box<J>),
    /// A `Train` this rank rejected: the other ranks must hear so instead of waiting for it.
    Rejected,
    Save(PathBuf),
    Load(PathBuf),
    /// Back to the weights the service started with, with fresh optimizer state.
    LoadStart,
}

/// What training work produced; `S` is an update's statistics.
#[derive(Debug)]
pub enum TrainDone<S> {
    Trained(S),
    Rejected,
    Saved,
    Loaded,
}

/// A model a service trains: its update, its checkpoints, and what it does when its part of
/// an update was rejected.
pub trait Trainable {
    type Job;
    type Stats;
    type Error;

    fn train(&self, job: &Self::Job) -> Result<Self::Stats, Self::Error>;
    /// This rank takes no part in the update (its request was invalid): tell the other ranks.
    fn reject(&self);
    /// Writes weights, optimizer state and whatever the model needs to reload (atomically).
    fn save(&self, dir: &Path) -> Result<(), Self::Error>;
    /// Restores weights and optimizer state saved by [`Trainable::save`].
    fn load(&self, dir: &Path) -> Result<(), Self::Error>;
    /// Puts back the weights the model started with and drops the optimizer state, so the
    /// next update is a new run's first.
    fn load_start(&self) -> Result<(), Self::Error>;

    /// Runs one item of training work.
    fn run_training(
        &self,
        work: &TrainWork<Self::Job>,
    ) -> Result<TrainDone<Self::Stats>, Self::Error> {
        Ok(match work {
            TrainWork::Train(job) => TrainDone::Trained(self.train(job)?),
            TrainWork::Rejected => {
                self.reject();
                TrainDone::Rejected
            }
            TrainWork::Save(dir) => {
                self.save(dir)?;
                TrainDone::Saved
            }
            TrainWork::Load(dir) => {
                self.load(dir)?;
                TrainDone::Loaded
            }
            TrainWork::LoadStart => {
                self.load_start()?;
                TrainDone::Loaded
            }
        })
    }
}

/// An engine output that may be the answer to training work.
pub trait TrainOutput<S>: std::fmt::Debug + Sized {
    /// The training answer, or `self` back when the output is of another kind.
    fn into_training(self) -> Result<TrainDone<S>, Self>;
}

/// Ties a training service's engine types to its training work: `$work::Training` holds a
/// [`TrainWork<$job>`] and `$done::Training` a [`TrainDone<$stats>`]. Writes the two
/// conversions [`train`], [`save`] and [`load`] need (`From<TrainWork<$job>> for $work` and
/// [`TrainOutput<$stats>`] for `$done`), which would otherwise be the same ten lines in every
/// training service.
#[macro_export]
macro_rules! training_work {
    ($work:ident, $done:ident, $job:ty, $stats:ty) => {
        impl From<$crate::training_rpc::TrainWork<$job>> for $work {
            fn from(w: $crate::training_rpc::TrainWork<$job>) -> Self {
                Self::Training(w)
            }
        }

        impl $crate::training_rpc::TrainOutput<$stats> for $done {
            fn into_training(self) -> Result<$crate::training_rpc::TrainDone<$stats>, Self> {
                match self {
                    Self::Training(done) => Ok(done),
                    other => Err(other),
                }
            }
        }
    };
}

/// Whether a training service still holds the weights it started with (`Info`'s
/// `rank.start_weights`). Cleared before anything may change them (a `Train`, a checkpoint
/// load) — even one that then fails, since it may have written part of an update — and set
/// again only by a load of the start weights that succeeded with nothing else begun meanwhile
/// (a `Train` queued behind it would change them again).
#[derive(Debug, Clone)]
pub struct StartWeightsFlag(Arc<Mutex<StartState>>);

#[derive(Debug)]
struct StartState {
    /// Changes begun so far: a load of the start weights counts only if it was the last.
    changes: u64,
    at_start: bool,
}

impl Default for StartWeightsFlag {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(StartState {
            changes: 0,
            at_start: true,
        })))
    }
}

impl StartWeightsFlag {
    pub fn holds_start(&self) -> bool {
        self.0.lock().expect("start flag lock").at_start
    }

    /// Something is about to change the weights; returns its number.
    fn changing(&self) -> u64 {
        let mut s = self.0.lock().expect("start flag lock");
        s.changes += 1;
        s.at_start = false;
        s.changes
    }

    /// Change `change` put the start weights back: they hold unless another change began since.
    fn back_at_start(&self, change: u64) {
        let mut s = self.0.lock().expect("start flag lock");
        if s.changes == change {
            s.at_start = true;
        }
    }
}

/// Runs a `Train` job the service validated (`job`). A rank of a data-parallel group
/// (`grouped`) whose request was invalid first tells its engine: the other ranks are waiting
/// for this one's part of the update and must hear that there is none.
pub async fn train<J, S: std::fmt::Debug, I, O>(
    engine: &Engine<I, O>,
    job: Result<J, Status>,
    grouped: bool,
    start: &StartWeightsFlag,
) -> Result<S, Status>
where
    I: From<TrainWork<J>> + Send + 'static,
    O: TrainOutput<S> + Send + 'static,
{
    let job = match job {
        Ok(job) => job,
        Err(status) => {
            if grouped {
                let _ = engine.submit(vec![TrainWork::Rejected.into()]).await;
            }
            return Err(status);
        }
    };
    start.changing();
    let done = engine
        .submit(vec![TrainWork::Train(Box::new(job)).into()])
        .await?
        .pop()
        .ok_or_else(|| Status::internal("the engine returned no result"))?;
    match done.into_training() {
        Ok(TrainDone::Trained(stats)) => Ok(stats),
        Ok(other) => Err(unexpected(other)),
        Err(other) => Err(unexpected(other)),
    }
}

/// Validates the target and runs the engine's checkpoint save.
pub async fn save<J, I, O>(
    engine: &Engine<I, O>,
    req: SaveCheckpointRequest,
) -> Result<Response<SaveCheckpointResponse>, Status>
where
    I: From<TrainWork<J>> + Send + 'static,
    O: Send + 'static,
{
    if req.path.trim().is_empty() {
        return Err(invalid("path", "must not be empty"));
    }
    if req.path.contains('\0') {
        return Err(invalid("path", "must not contain NUL"));
    }
    let path = PathBuf::from(&req.path);
    // A save replaces the directory at `path` whole: only ever an earlier checkpoint (or an
    // empty directory), never whatever else a caller names.
    if path.exists() && !(is_checkpoint(&path) || is_empty_dir(&path)) {
        return Err(invalid(
            "path",
            format!(
                "{} exists and is not a checkpoint; a save never replaces it",
                path.display()
            ),
        ));
    }
    let work = TrainWork::<J>::Save(path);
    engine.submit(vec![work.into()]).await?;
    Ok(Response::new(SaveCheckpointResponse { path: req.path }))
}

/// A model directory, or a LoRA actor's checkpoint: a PEFT adapter directory.
fn is_checkpoint(path: &std::path::Path) -> bool {
    path.is_dir()
        && ["config.json", "adapter_config.json"]
            .iter()
            .any(|f| path.join(f).is_file())
}

fn is_empty_dir(path: &std::path::Path) -> bool {
    std::fs::read_dir(path).is_ok_and(|mut entries| entries.next().is_none())
}

/// With `start_weights`: puts the start weights back (`path` must be empty). Otherwise checks
/// that `path` is a model (or adapter) directory — unless the service is one rank of a group
/// (`grouped`): then the engines check it together, since only rank 0 must be able to read it
/// — and runs the engine's checkpoint load. A checkpoint the model rejects (other shapes or
/// names) is the caller's mistake, so it is INVALID_ARGUMENT, not INTERNAL; the engine
/// validates before copying, so the weights are intact.
pub async fn load<J, I, O>(
    engine: &Engine<I, O>,
    req: LoadCheckpointRequest,
    grouped: bool,
    start: &StartWeightsFlag,
) -> Result<Response<LoadCheckpointResponse>, Status>
where
    I: From<TrainWork<J>> + Send + 'static,
    O: Send + 'static,
{
    if req.start_weights {
        if !req.path.is_empty() {
            return Err(invalid(
                "path",
                "must be empty with start_weights (the service loads its own start weights)",
            ));
        }
        let change = start.changing();
        engine
            .submit(vec![TrainWork::<J>::LoadStart.into()])
            .await?;
        start.back_at_start(change);
        return Ok(Response::new(LoadCheckpointResponse {}));
    }
    let path = PathBuf::from(req.path);
    if !grouped && !is_checkpoint(&path) {
        return Err(invalid(
            "path",
            format!("{} is not a checkpoint directory", path.display()),
        ));
    }
    start.changing();
    match engine.submit(vec![TrainWork::<J>::Load(path).into()]).await {
        Ok(_) => Ok(Response::new(LoadCheckpointResponse {})),
        Err(EngineError::Failed(msg)) => Err(invalid("path", msg)),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_counts_only_if_nothing_began_after_it() {
        let flag = StartWeightsFlag::default();
        assert!(flag.holds_start());
        let reset = flag.changing();
        assert!(!flag.holds_start(), "cleared while the reset runs");
        flag.back_at_start(reset);
        assert!(flag.holds_start());
        let reset = flag.changing();
        flag.changing(); // a Train queued behind the reset
        flag.back_at_start(reset);
        assert!(!flag.holds_start(), "the Train changes them again");
    }
}
