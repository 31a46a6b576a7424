//! Run checkpoints. A checkpoint is a directory `runs/<id>/checkpoints/step-NNNNNN/` holding the
//! actor's and critic's own checkpoints (written by their `SaveCheckpoint` RPCs, weights plus
//! optimizer state) and `state.json`, the orchestrator's state: step, data cursor, KL
//! controller, reward statistics, config. It is assembled in a temporary directory, fsynced and
//! renamed into place; only then is the `latest` pointer swapped (temp → fsync → rename), and
//! old checkpoints beyond the number to keep are removed. A crash at any point leaves `latest`
//! naming a complete checkpoint.

use std::path::{Path, PathBuf};

use rrlhf_ppo::{KlController, RewardNorm};
use rrlhf_proto::common::v1::{LoadCheckpointRequest, SaveCheckpointRequest};
use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::clients::{Pool, Services, retry, with_deadline};
use crate::config::{OrchestratorConfig, RetrySettings};
use crate::error::{OrchestratorError, Result};
use crate::instances::Instances;
use crate::prompts::Cursor;

/// Everything besides the services' weights that a resumed run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Steps completed.
    pub step: usize,
    pub cursor: Cursor,
    pub kl: KlController,
    pub reward_norm: RewardNorm,
    /// The configuration in force, including live changes (λ, strategy, β).
    pub config: OrchestratorConfig,
}

pub const LATEST: &str = "latest";
pub const STATE_FILE: &str = "state.json";

pub use rrlhf_util::fsio::write_atomic;

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Calls RPC `$method` with the request `$request(path)` on every actor and critic rank at
/// once ([`on_all_ranks`]), `path` being the service's subdirectory of `$dir`.
macro_rules! on_trained_services {
    ($services:expr, $retry:expr, $dir:expr, $rpc:literal, $method:ident, $request:expr) => {{
        let path = |svc: &str| $dir.join(svc).display().to_string();
        let deadline = $retry.deadlines.checkpoint_secs;
        tokio::try_join!(
            on_all_ranks(
                &$services.actor,
                $retry,
                concat!("actor ", $rpc),
                path("actor"),
                move |mut c, path| async move {
                    let request = with_deadline(($request)(path), deadline);
                    c.$method(request).await.map(drop)
                },
            ),
            on_all_ranks(
                &$services.critic,
                $retry,
                concat!("critic ", $rpc),
                path("critic"),
                move |mut c, path| async move {
                    let request = with_deadline(($request)(path), deadline);
                    c.$method(request).await.map(drop)
                },
            ),
        )
    }};
}

pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

fn step_name(step: usize) -> String {
    format!("step-{step:06}")
}

/// Saves the services and `state` as the checkpoint of `state.step`; returns its directory.
/// With `known`, the services' instances are compared with it once they have written: a
/// checkpoint written by a restarted service (its start weights) never becomes `latest`.
pub async fn save(
    services: &Services,
    retry_cfg: &RetrySettings,
    run_dir: &Path,
    state: &RunState,
    keep: usize,
    known: Option<&Instances>,
) -> Result<PathBuf> {
    let io = |what: &str, e| OrchestratorError::io(format!("checkpoint: {what}"), e);
    let root = checkpoints_dir(run_dir);
    std::fs::create_dir_all(&root).map_err(|e| io("creating the directory", e))?;
    let name = step_name(state.step);
    let tmp = root.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io("clearing an old temporary", e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io("creating the temporary", e))?;
    let abs = std::path::absolute(&tmp).map_err(|e| io("resolving the path", e))?;
    // Every rank of each trained service is called, as for loads: rank 0 writes the group's
    // checkpoint (ranks hold identical weights), and under ZeRO the others first send it their
    // shards of the optimizer state.
    on_trained_services!(
        services,
        retry_cfg,
        abs,
        "SaveCheckpoint",
        save_checkpoint,
        |path| SaveCheckpointRequest { path }
    )?;
    if let Some(known) = known {
        known.ensure_unchanged(services, retry_cfg).await?;
    }
    let json = serde_json::to_vec_pretty(state).expect("the run state serialises");
    write_atomic(&tmp.join(STATE_FILE), &json).map_err(|e| io("writing state.json", e))?;
    let final_dir = root.join(&name);
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| io("replacing the old checkpoint", e))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| io("renaming into place", e))?;
    sync_dir(&root).map_err(|e| io("syncing", e))?;
    write_atomic(&root.join(LATEST), name.as_bytes()).map_err(|e| io("swapping latest", e))?;
    prune(&root, keep).map_err(|e| io("removing old checkpoints", e))?;
    Ok(final_dir)
}

/// Removes all but the newest `keep` complete checkpoints.
fn prune(root: &Path, keep: usize) -> std::io::Result<()> {
    let mut steps: Vec<String> = std::fs::read_dir(root)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    steps.sort();
    let excess = steps.len().saturating_sub(keep);
    for n in &steps[..excess] {
        std::fs::remove_dir_all(root.join(n))?;
    }
    Ok(())
}

/// The latest complete checkpoint of a run directory, if any.
pub fn latest(run_dir: &Path) -> Result<Option<(PathBuf, RunState)>> {
    let root = checkpoints_dir(run_dir);
    let pointer = root.join(LATEST);
    let name = match std::fs::read_to_string(&pointer) {
        Ok(n) => n.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(OrchestratorError::io(
                format!("reading {}", pointer.display()),
                e,
            ));
        }
    };
    let dir = root.join(&name);
    let path = dir.join(STATE_FILE);
    let reading = || format!("reading the checkpoint {}", path.display());
    let text = std::fs::read_to_string(&path).map_err(|e| OrchestratorError::io(reading(), e))?;
    let state: RunState = serde_json::from_str(&text)
        .map_err(|e| OrchestratorError::io(reading(), std::io::Error::from(e)))?;
    Ok(Some((dir, state)))
}

/// Loads a checkpoint's weights and optimizer states into every actor and critic rank.
pub async fn restore_services(
    services: &Services,
    retry_cfg: &RetrySettings,
    dir: &Path,
) -> Result<()> {
    let abs = std::path::absolute(dir)
        .map_err(|e| OrchestratorError::io(format!("resolving {}", dir.display()), e))?;
    on_trained_services!(
        services,
        retry_cfg,
        abs,
        "LoadCheckpoint",
        load_checkpoint,
        |path| LoadCheckpointRequest {
            path,
            start_weights: false,
        }
    )?;
    Ok(())
}

/// Before a new run: when any actor or critic rank holds other weights than it started with
/// (an earlier run trained it, or a checkpoint was loaded into it), puts the start weights and
/// fresh optimizer state back on every rank of both, so a run never silently continues another
/// run's policy. Returns whether it did.
pub async fn restore_start(
    services: &Services,
    retry_cfg: &RetrySettings,
    instances: &Instances,
) -> Result<bool> {
    if instances.at_start() == (true, true) {
        return Ok(false);
    }
    on_trained_services!(
        services,
        retry_cfg,
        Path::new(""),
        "LoadCheckpoint (start weights)",
        load_checkpoint,
        |_| LoadCheckpointRequest {
            path: String::new(),
            start_weights: true,
        }
    )?;
    Ok(true)
}

/// Sends `path` to every rank of `pool` at once: the ranks of a data-parallel group load and
/// save together (rank 0 reads or writes; the ranks agree, broadcast or gather), so a rank
/// waiting for the next one's call would stall the group. A lone rank's transient failures are
/// retried; a group's are not (one rank repeating its part would not match the others).
async fn on_all_ranks<C, F, Fut>(
    pool: &Pool<C>,
    retry_cfg: &RetrySettings,
    what: &'static str,
    path: String,
    call: F,
) -> Result<()>
where
    C: Clone + Send + Sync + 'static,
    F: Fn(C, String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), Status>> + Send,
{
    if pool.len() == 1 {
        return retry(retry_cfg, what, || call(pool.rank(0), path.clone())).await;
    }
    let mut tasks = tokio::task::JoinSet::new();
    for rank in 0..pool.len() {
        let (client, call, path) = (pool.rank(rank), call.clone(), path.clone());
        tasks.spawn(async move { call(client, path).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|error| OrchestratorError::Task { what, error })?
            .map_err(|e| OrchestratorError::rpc(what, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        for s in [1, 2, 3, 4] {
            std::fs::create_dir(dir.path().join(step_name(s))).unwrap();
        }
        prune(dir.path(), 2).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec![step_name(3), step_name(4)]);
    }

    #[test]
    fn atomic_write_replaces_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("latest");
        write_atomic(&p, b"step-000001").unwrap();
        write_atomic(&p, b"step-000002").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "step-000002");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
