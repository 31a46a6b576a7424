//! Crash-safe file writes with the model's errors: a reader sees the old file or the complete
//! new one, never half (`rrlhf_util::fsio` does the writing).

use std::io;
use std::path::Path;

use crate::error::{ModelError, Result};

/// Writes `bytes` to `path` via a temporary sibling, fsync and rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    rrlhf_util::fsio::write_atomic(path, bytes).map_err(|e| ModelError::io(path, e))
}

/// Fills a fresh temporary directory next to `dir` with `fill`, fsyncs it, then moves it into
/// place, replacing any previous `dir` only once the new one is complete.
pub fn write_dir_atomic(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    /// `fill`'s own error, or the writer's I/O error (which gets `dir` as its context).
    enum Failure {
        Fill(ModelError),
        Io(io::Error),
    }
    impl From<io::Error> for Failure {
        fn from(e: io::Error) -> Self {
            Self::Io(e)
        }
    }
    rrlhf_util::fsio::write_dir_atomic(dir, |tmp| fill(tmp).map_err(Failure::Fill)).map_err(|f| {
        match f {
            Failure::Fill(e) => e,
            Failure::Io(e) => ModelError::io(dir, e),
        }
    })
}

#[cfg(test)]
mod tests {
    use std::fs;

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
