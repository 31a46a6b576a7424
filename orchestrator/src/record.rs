//! The control plane on disk: every run keeps `<run dir>/run.json`, its [`RunInfo`] as of its
//! last change of status or step (written atomically). An orchestrator that starts finds the
//! runs of its output directory there, so a restart does not forget them: finished ones are
//! listed as they ended, ones that were being driven as interrupted (or resumed at once).

use std::path::Path;

use crate::checkpoint::write_atomic;
use crate::error::{OrchestratorError, Result};
use crate::run::RunInfo;

pub const RECORD_FILE: &str = "run.json";

/// Writes `info` as the record of the run in `run_dir`.
pub fn write(run_dir: &Path, info: &RunInfo) -> Result<()> {
    let path = run_dir.join(RECORD_FILE);
    let json = serde_json::to_vec_pretty(info).expect("run info serialises");
    write_atomic(&path, &json)
        .map_err(|e| OrchestratorError::io(format!("writing {}", path.display()), e))
}

/// The recorded runs under `out_dir`, by id. A run directory without a readable record is
/// skipped with a warning (it may be another tool's, or a run of an older version).
pub fn scan(out_dir: &Path) -> Result<Vec<RunInfo>> {
    let entries = match std::fs::read_dir(out_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(OrchestratorError::io(
                format!("listing runs in {}", out_dir.display()),
                e,
            ));
        }
    };
    let mut runs = Vec::new();
    for entry in entries.filter_map(|e| e.ok()) {
        let path = entry.path().join(RECORD_FILE);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        match serde_json::from_str::<RunInfo>(&text) {
            Ok(info) if entry.file_name().to_str() != Some(info.id.as_str()) => {
                tracing::warn!(
                    path = %path.display(),
                    id = %info.id,
                    "run record skipped: a run's directory is named after its id"
                )
            }
            Ok(info) => runs.push(found_at(info, &entry.path())),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable run record skipped")
            }
        }
    }
    runs.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(runs)
}

/// `info` as found in `dir`: the recorded paths may be relative to another process's working
/// directory, or the volume may be mounted elsewhere now, so the run's directory is where its
/// record was found, and its last checkpoint is moved along with it.
fn found_at(mut info: RunInfo, dir: &Path) -> RunInfo {
    if let Some(ckpt) = &info.last_checkpoint
        && let Ok(inside) = ckpt.strip_prefix(&info.dir)
    {
        info.last_checkpoint = Some(dir.join(inside));
    }
    info.dir = dir.to_path_buf();
    info
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::RunStatus;
    use rrlhf_robust::Strategy;

    fn info(id: &str, dir: &str) -> RunInfo {
        RunInfo {
            id: id.into(),
            status: RunStatus::Finished,
            step: 2,
            steps: 2,
            dir: dir.into(),
            strategy: Strategy::Nominal,
            beta: 0.05,
            error: None,
            last_checkpoint: Some(Path::new(dir).join("checkpoints/step-000002")),
            last_metrics: None,
        }
    }

    /// A run recorded by a process in another working directory (a relative `run.out_dir`) is
    /// found where its record is; before, its metrics and checkpoints were looked for at the
    /// recorded relative path and the dashboard showed no steps.
    #[test]
    fn recorded_paths_follow_the_record() {
        let out = tempfile::tempdir().unwrap();
        let dir = out.path().join("a");
        std::fs::create_dir(&dir).unwrap();
        write(&dir, &info("a", "elsewhere/runs/a")).unwrap();
        let copied = out.path().join("b");
        std::fs::create_dir(&copied).unwrap();
        write(&copied, &info("not-b", "elsewhere/runs/not-b")).unwrap();
        let runs = scan(out.path()).unwrap();
        assert_eq!(
            runs.len(),
            1,
            "a record whose id is not its directory's is skipped"
        );
        assert_eq!(runs[0].dir, dir);
        assert_eq!(
            runs[0].last_checkpoint.as_deref(),
            Some(dir.join("checkpoints/step-000002").as_path())
        );
    }
}
