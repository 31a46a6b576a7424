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
            Ok(info) => runs.push(info),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable run record skipped")
            }
        }
    }
    runs.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(runs)
}
