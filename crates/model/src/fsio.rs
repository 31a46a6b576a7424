//! Crash-safe file writes: a reader sees the old file or the complete new one, never half.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

/// Writes `bytes` to `path` via a temporary sibling, fsync and rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = sibling(path, "tmp");
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_parent(path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        ModelError::io(path, e)
    })
}

/// Fills a fresh temporary directory next to `dir` with `fill`, fsyncs it, then moves it into
/// place, replacing any previous `dir` only once the new one is complete.
pub fn write_dir_atomic(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = sibling(dir, "tmp");
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    if let Err(e) = fill(&tmp) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let finish = || -> std::io::Result<()> {
        for entry in fs::read_dir(&tmp)? {
            File::open(entry?.path())?.sync_all()?;
        }
        File::open(&tmp)?.sync_all()?;
        if dir.exists() {
            let old = sibling(dir, "old");
            let _ = fs::remove_dir_all(&old);
            fs::rename(dir, &old)?;
            fs::rename(&tmp, dir)?;
            fs::remove_dir_all(&old)?;
        } else {
            fs::rename(&tmp, dir)?;
        }
        sync_parent(dir)
    };
    finish().map_err(|e| ModelError::io(dir, e))
}

fn sibling(path: &Path, tag: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.{tag}-{}", std::process::id()))
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => File::open(parent)?.sync_all(),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_a_directory_only_when_complete() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        write_dir_atomic(&dir, |d| write_atomic(&d.join("a"), b"1")).unwrap();
        let failed = write_dir_atomic(&dir, |d| {
            write_atomic(&d.join("a"), b"2")?;
            Err(ModelError::InvalidInput("boom".into()))
        });
        assert!(failed.is_err());
        assert_eq!(fs::read(dir.join("a")).unwrap(), b"1");
        write_dir_atomic(&dir, |d| write_atomic(&d.join("a"), b"3")).unwrap();
        assert_eq!(fs::read(dir.join("a")).unwrap(), b"3");
        assert_eq!(
            fs::read_dir(root.path()).unwrap().count(),
            1,
            "no temp dirs left"
        );
    }
}
