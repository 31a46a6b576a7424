//! One orchestrator per run directory. Two processes driving the same run would interleave
//! their metrics lines and overwrite each other's checkpoints, so a run takes `runs/<id>/lock`
//! (created exclusively, holding the owner's pid) for as long as it is driven. A lock whose
//! process is gone (a crash) is stale and taken over.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{OrchestratorError, Result};

/// Held while a run is driven; removes the lock file when dropped.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

fn process_alive(pid: u32) -> bool {
    // Linux and most Unixes; elsewhere a lock is never considered stale.
    if Path::new("/proc/self").exists() {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

impl RunLock {
    pub fn acquire(run_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(run_dir)
            .map_err(|e| OrchestratorError::io(format!("creating {}", run_dir.display()), e))?;
        let path = run_dir.join("lock");
        let io = |e| OrchestratorError::io(format!("creating {}", path.display()), e);
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    write!(f, "{}", std::process::id())
                        .and_then(|()| f.sync_all())
                        .map_err(io)?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|s| s.trim().parse::<u32>().ok());
                    match owner {
                        Some(pid) if process_alive(pid) => {
                            return Err(OrchestratorError::Locked {
                                dir: run_dir.to_path_buf(),
                                lock: path.clone(),
                                pid,
                            });
                        }
                        // A crashed owner (or an unreadable lock): take it over.
                        _ => {
                            let _ = std::fs::remove_file(&path);
                        }
                    }
                }
                Err(e) => return Err(io(e)),
            }
        }
        // Someone else re-created the lock each time a stale one was removed.
        Err(io(std::io::ErrorKind::AlreadyExists.into()))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_driver_is_refused_and_a_stale_lock_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let held = RunLock::acquire(dir.path()).unwrap();
        let err = RunLock::acquire(dir.path()).unwrap_err();
        assert!(matches!(err, OrchestratorError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("being driven by process"), "{err}");
        drop(held);
        assert!(!dir.path().join("lock").exists());
        // A lock left by a process that no longer exists.
        std::fs::write(dir.path().join("lock"), "4294967").unwrap();
        let _again = RunLock::acquire(dir.path()).unwrap();
    }
}
