//! Errors of the data crate: each names the file and, for a bad record, the line.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {err}")]
    Io {
        path: PathBuf,
        // Shown in the message rather than as a `source`, so chains print it once.
        err: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Malformed {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Unusable { path: PathBuf, message: String },
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;
