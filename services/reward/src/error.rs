//! The service's errors and their one mapping to gRPC status codes.

use rrlhf_runtime::engine::EngineError;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is wrong; the message names the field.
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    /// The engine queue is full.
    #[error("the scoring queue is full ({0} requests waiting); retry later")]
    Busy(usize),
    /// Too much work queued, or queued too long (the message says which).
    #[error("{0}")]
    Overloaded(String),
    /// The model's own output is unusable (non-finite head rewards): DATA_LOSS.
    #[error("the reward model's output is corrupt: {0}")]
    CorruptModel(String),
    /// The engine thread is gone (shutting down, or it failed).
    #[error("the model engine is not running")]
    EngineDown,
    /// The model failed on a valid request.
    #[error("model error: {0}")]
    Model(#[from] rrlhf_model::ModelError),
    /// The model failed while running a batch.
    #[error("model error: {0}")]
    Engine(String),
    /// Running the batch panicked.
    #[error("the model engine panicked: {0}")]
    Panicked(String),
}

impl From<EngineError> for ServiceError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Busy(n) => Self::Busy(n),
            EngineError::Overloaded(why) => Self::Overloaded(why),
            EngineError::Down => Self::EngineDown,
            EngineError::Failed(msg) => Self::Engine(msg),
            EngineError::Panicked(msg) => Self::Panicked(msg),
        }
    }
}

impl ServiceError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        let msg = e.to_string();
        match e {
            ServiceError::InvalidArgument { .. } => Status::invalid_argument(msg),
            ServiceError::Busy(_) | ServiceError::Overloaded(_) => Status::resource_exhausted(msg),
            ServiceError::CorruptModel(_) => Status::data_loss(msg),
            ServiceError::EngineDown => Status::unavailable(msg),
            ServiceError::Model(_) | ServiceError::Engine(_) | ServiceError::Panicked(_) => {
                Status::internal(msg)
            }
        }
    }
}
