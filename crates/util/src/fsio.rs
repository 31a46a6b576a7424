//! Crash-safe file writes: a reader sees the old file (or directory) or the complete new one,
//! never half of it.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` via a temporary sibling, fsync, rename, then fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |tmp| File::create(tmp)?.write_all(bytes))
}

/// Like [`write_atomic`] for a writer that creates the file itself (one that streams more than
/// fits in memory): `write` fills the temporary path it is given, which is then fsynced and
/// renamed to `path`. `write`'s error is returned as it is.
pub fn write_atomic_with<E: From<io::Error>>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let tmp = sibling(path, "tmp")?;
    let finish = || -> io::Result<()> {
        File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_parent(path)
    };
    write(&tmp)
        .and_then(|()| finish().map_err(E::from))
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
}

/// Fills a fresh temporary directory next to `dir` with `fill`, fsyncs it, then moves it into
/// place, replacing any previous `dir` only once the new one is complete. `fill`'s error is
/// returned as it is (the temporary directory is removed).
pub fn write_dir_atomic<E: From<io::Error>>(
    dir: &Path,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let tmp = sibling(dir, "tmp")?;
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    if let Err(e) = fill(&tmp) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let finish = || -> io::Result<()> {
        for entry in fs::read_dir(&tmp)? {
            File::open(entry?.path())?.sync_all()?;
        }
        File::open(&tmp)?.sync_all()?;
        if dir.exists() {
            let old = sibling(dir, "old")?;
            let _ = fs::remove_dir_all(&old);
            fs::rename(dir, &old)?;
            fs::rename(&tmp, dir)?;
            fs::remove_dir_all(&old)?;
        } else {
            fs::rename(&tmp, dir)?;
        }
        sync_parent(dir)
    };
    finish().map_err(|e| {
        let _ = fs::remove_dir_all(&tmp);
        E::from(e)
    })
}

/// `.<name>.<suffix>-<pid>` beside `path`: hidden, so listings of the directory skip it, and
/// per process, so two processes writing the same path never share a temporary.
fn sibling(path: &Path, suffix: &str) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no file name", path.display()),
        )
    })?;
    let name = name.to_string_lossy();
    Ok(path.with_file_name(format!(".{name}.{suffix}-{}", std::process::id())))
}

fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_directories_are_replaced_whole() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("state.json");
        write_atomic(&file, b"one").unwrap();
        write_atomic(&file, b"two").unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"two");

        let dir = root.path().join("ckpt");
        write_dir_atomic::<io::Error>(&dir, |tmp| fs::write(tmp.join("a"), "1")).unwrap();
        let failed = write_dir_atomic::<io::Error>(&dir, |tmp| {
            fs::write(tmp.join("a"), "half")?;
            Err(io::Error::other("the writer failed"))
        });
        assert!(failed.is_err());
        assert_eq!(
            fs::read_to_string(dir.join("a")).unwrap(),
            "1",
            "the old one stays"
        );
        write_dir_atomic::<io::Error>(&dir, |tmp| fs::write(tmp.join("b"), "2")).unwrap();
        assert!(
            !dir.join("a").exists() && dir.join("b").exists(),
            "replaced whole"
        );
        let names: Vec<_> = fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temporary left behind: {names:?}");
    }
}
