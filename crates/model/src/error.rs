//! The model crate's error type: every failure names the file, tensor or field at fault.

use std::path::PathBuf;

/// Errors from loading, running, saving or training a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {err}")]
    Io {
        path: PathBuf,
        // Shown in the message rather than as a `source`, so chains print it once.
        err: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("unsupported config value in {path}: {field} = {value} ({hint})")]
    Unsupported {
        path: PathBuf,
        field: String,
        value: String,
        hint: String,
    },
    #[error("checkpoint {path}: missing tensor `{name}`")]
    MissingTensor { path: PathBuf, name: String },
    #[error("checkpoint {path}: unexpected tensor `{name}` (not part of this model)")]
    UnexpectedTensor { path: PathBuf, name: String },
    #[error(
        "checkpoint {path}: tensor `{name}` has shape {found:?}, the model expects {expected:?}"
    )]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<i64>,
        found: Vec<i64>,
    },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The work was stopped between steps: nobody waits for its result any more
    /// ([`rrlhf_util::cancel`]).
    #[error("stopped: every caller has gone")]
    Abandoned,
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            err,
        }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
