//! One orchestrator per run directory. Two processes driving the same run would interleave
//! their metrics lines and overwrite each other's checkpoints, so a run takes `runs/<id>/lock`
//! (created exclusively) for as long as it is driven. The lock names its owner — pid, host and
//! the process's start time — and the owner touches it every few seconds. It is stale, and taken
//! over, when its owner is provably gone: on the same host, no process with that pid started at
//! that time (a container restarted as pid 1 again is a new owner, not the old one); on another
//! host (a replaced pod on a shared volume), no touch for [`LEASE`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use crate::error::{OrchestratorError, Result};

/// How long a lock of another host stays valid without a touch.
pub const LEASE: Duration = Duration::from_secs(60);
/// How often the owner touches its lock.
const TOUCH_EVERY: Duration = Duration::from_secs(10);

/// Held while a run is driven; removes the lock file when dropped.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    stop: Arc<AtomicBool>,
}

/// Who holds a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owner {
    pid: u32,
    host: String,
    /// Start time of the process in clock ticks after boot (`/proc/<pid>/stat`, field 22).
    started: Option<u64>,
}

impl Owner {
    fn me() -> Self {
        let pid = std::process::id();
        Self {
            pid,
            host: hostname(),
            started: start_time(pid),
        }
    }

    fn line(&self) -> String {
        let started = self.started.map_or("-".into(), |t| t.to_string());
        format!("{} {} {started}\n", self.pid, self.host)
    }

    /// `pid host started`, or a bare pid (locks of earlier versions: this host).
    fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split_whitespace();
        let pid = parts.next()?.parse().ok()?;
        Some(Self {
            pid,
            host: parts.next().map_or_else(hostname, str::to_owned),
            started: parts.next().and_then(|t| t.parse().ok()),
        })
    }

    /// Whether this owner may still be driving the run (`age`: since its last touch).
    fn may_be_alive(&self, age: Duration) -> bool {
        if self.host != hostname() {
            return age < LEASE;
        }
        if !Path::new("/proc/self").exists() {
            // Not Linux: no way to tell; never take a lock over.
            return true;
        }
        match (self.started, start_time(self.pid)) {
            (_, None) => false,
            (Some(then), Some(now)) => then == now,
            (None, Some(_)) => true,
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && !h.contains(char::is_whitespace))
        .unwrap_or_else(|| "localhost".into())
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is parenthesised and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
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
                    f.write_all(Owner::me().line().as_bytes())
                        .and_then(|()| f.sync_all())
                        .map_err(io)?;
                    return Ok(Self::held(path));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|s| Owner::parse(&s));
                    let age = std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .unwrap_or_default();
                    match owner {
                        Some(o) if o.may_be_alive(age) => {
                            return Err(OrchestratorError::Locked {
                                dir: run_dir.to_path_buf(),
                                lock: path.clone(),
                                pid: o.pid,
                            });
                        }
                        // A gone owner (or an unreadable lock): take it over.
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

    /// The lock at `path`, now ours: touched every [`TOUCH_EVERY`] until dropped.
    fn held(path: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, file) = (stop.clone(), path.clone());
        std::thread::spawn(move || {
            let tick = Duration::from_millis(250);
            let mut since = Duration::ZERO;
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                since += tick;
                if since >= TOUCH_EVERY {
                    since = Duration::ZERO;
                    if let Ok(f) = std::fs::File::options().append(true).open(&file) {
                        let _ = f.set_modified(SystemTime::now());
                    }
                }
            }
        });
        Self { path, stop }
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
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
        // A lock left by a process that no longer exists (the format of earlier versions).
        std::fs::write(dir.path().join("lock"), "4294967").unwrap();
        drop(RunLock::acquire(dir.path()).unwrap());
        // Our own pid, but another start time: a restarted container's pid 1 again.
        let me = Owner::me();
        let earlier = Owner {
            started: me.started.map(|t| t.saturating_sub(1)),
            ..me.clone()
        };
        std::fs::write(dir.path().join("lock"), earlier.line()).unwrap();
        drop(RunLock::acquire(dir.path()).unwrap());
        // Another host's lock holds for the lease, then is taken over.
        let other = Owner {
            host: "elsewhere".into(),
            ..me
        };
        std::fs::write(dir.path().join("lock"), other.line()).unwrap();
        assert!(RunLock::acquire(dir.path()).is_err(), "fresh: still leased");
        let lock = std::fs::File::options()
            .append(true)
            .open(dir.path().join("lock"))
            .unwrap();
        lock.set_modified(SystemTime::now() - LEASE - Duration::from_secs(1))
            .unwrap();
        let _again = RunLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn an_owner_line_reads_back() {
        let me = Owner::me();
        assert!(me.started.is_some(), "Linux has /proc/self/stat");
        assert_eq!(Owner::parse(&me.line()), Some(me));
    }
}
