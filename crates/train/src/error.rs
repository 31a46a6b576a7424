//! Errors of training jobs.

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] rrlhf_model::ModelError),
    #[error(transparent)]
    Data(#[from] rrlhf_data::DataError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("invalid setting: {0}")]
    Invalid(String),
    #[error("cannot write {path}: {err}")]
    Io {
        path: std::path::PathBuf,
        // Shown in the message rather than as a `source`, so chains print it once.
        err: std::io::Error,
    },
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// The services report training failures as model errors (which they map to gRPC statuses): a
/// model error stays itself, anything else is invalid input of the call.
impl From<TrainError> for rrlhf_model::ModelError {
    fn from(e: TrainError) -> Self {
        match e {
            TrainError::Model(m) => m,
            other => rrlhf_model::ModelError::InvalidInput(other.to_string()),
        }
    }
}
