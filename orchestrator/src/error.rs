//! The orchestrator's one error type. Every failure keeps what a caller needs to act on it: the
//! field of a bad value, the gRPC status of a failed service call (so a transient failure is
//! told apart from a fatal one), the run state a command conflicts with, the context of an I/O
//! failure. The REST API maps the variants to HTTP status codes (`rest.rs`); the CLI prints them.
//!
//! Wrapped errors are shown in the message rather than exposed as a `source`, as in the other
//! rrlhf crates, so `{:#}` chains print them once.

use std::path::PathBuf;

use tonic::{Code, Status};

use crate::run::RunStatus;

#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// A configuration or request value is wrong.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// A request body is not JSON, or not of the expected shape (`path` is where, if known).
    #[error("{}", body_message(.path, .error))]
    Body {
        path: String,
        error: serde_json::Error,
    },
    /// The REST caller did not present the configured bearer token.
    #[error("missing or wrong `Authorization: Bearer <token>`")]
    Unauthorized,
    #[error("no run `{id}`")]
    NoRun { id: String },
    #[error("unknown action `{action}` (pause, resume, stop, checkpoint)")]
    UnknownAction { action: String },
    /// The run is over (or ended while a command waited for its answer).
    #[error("run `{id}` has ended{}", .status.map_or(String::new(), |s| format!(" ({s:?})")))]
    Ended {
        id: String,
        status: Option<RunStatus>,
    },
    #[error("the run is not paused")]
    NotPaused,
    #[error("run.id: run `{id}` already exists in {}; resume it or choose another id", .dir.display())]
    AlreadyExists { id: String, dir: PathBuf },
    #[error("run.id: run `{id}` is still active")]
    Active { id: String },
    /// Two live runs would train the same actor or critic (and a new run resets its weights).
    #[error(
        "endpoints: {url} is trained by run `{other}` ({status:?}); stop that run (or let it end) before starting run `{id}` on it"
    )]
    ServicesInUse {
        id: String,
        other: String,
        status: crate::run::RunStatus,
        url: String,
    },
    /// A run recorded on disk that no orchestrator drives (its own stopped).
    #[error(
        "run `{id}` is interrupted (the orchestrator driving it stopped); POST /v1/runs/{id}/resume continues it"
    )]
    NotDriven { id: String },
    /// Another live process holds the run directory's lock.
    #[error(
        "run.id: {} is being driven by process {pid}{} (lock {})",
        .dir.display(),
        if *.pid == std::process::id() { " (this one)" } else { "" },
        .lock.display()
    )]
    Locked {
        dir: PathBuf,
        lock: PathBuf,
        pid: u32,
    },
    /// A service call failed; `what` names the service and method.
    #[error("{what}: {}", .status.message())]
    Rpc { what: String, status: Status },
    /// A service answered, but not with what the protocol promises.
    #[error("{what}: {message}")]
    BadResponse { what: String, message: String },
    #[error("{context}: {error}")]
    Io {
        context: String,
        error: std::io::Error,
    },
    #[error("prompts: {0}")]
    Prompts(rrlhf_data::DataError),
    /// The robust objective rejected the batch's head rewards.
    #[error("the robust objective: {0}")]
    Objective(rrlhf_robust::RobustError),
    /// The PPO math rejected the batch (e.g. log-probs and values of different lengths).
    #[error("PPO: {0}")]
    Ppo(rrlhf_ppo::PpoError),
    #[error("report: {0}")]
    Report(rrlhf_plot::PlotError),
    /// A task of the step panicked or was cancelled.
    #[error("{what} task: {error}")]
    Task {
        what: &'static str,
        error: tokio::task::JoinError,
    },
    /// The batch's numbers are not finite (a broken reward model, an absurd setting): the step
    /// is not trained on; the run rolls it back and pauses.
    #[error(
        "non-finite {what} in this batch ({detail}); the step was rolled back and the run paused: fix the cause (a reward model, a setting) and resume"
    )]
    NonFinite { what: &'static str, detail: String },
    /// Training came back non-finite: the actor's or critic's weights may be corrupt. The run
    /// reloads its latest checkpoint into them, rolls back to it, and pauses.
    #[error(
        "training turned non-finite ({detail}); where the run can be resumed it went back to its latest checkpoint and paused: fix the cause (a learning rate, a setting) and resume"
    )]
    Diverged { detail: String },
    /// Trained services restarted (their weights and optimizer state went with the old
    /// process) and no checkpoint exists to reload into them.
    #[error(
        "{} restarted and came back with its start weights; the run has no checkpoint to reload",
        .services.join(", ")
    )]
    Restarted { services: Vec<String> },
    /// A failure of one PPO step, numbered from 1.
    #[error("step {step}: {error}")]
    Step {
        step: usize,
        error: Box<OrchestratorError>,
    },
}

fn body_message(path: &str, error: &serde_json::Error) -> String {
    if path.is_empty() || path == "." {
        format!("invalid JSON body: {error}")
    } else {
        format!("{path}: {error}")
    }
}

pub type Result<T, E = OrchestratorError> = std::result::Result<T, E>;

/// Whether a call that failed with `code` may succeed when repeated: the service is down,
/// restarting, busy, or the connection broke mid-call. Anything else (bad argument, bad token)
/// is the run's fault.
pub fn is_transient_code(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Unknown
    )
}

impl OrchestratorError {
    pub fn invalid(field: impl Into<String>, message: impl ToString) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.to_string(),
        }
    }

    pub fn io(context: impl Into<String>, error: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            error,
        }
    }

    pub fn rpc(what: impl Into<String>, status: Status) -> Self {
        Self::Rpc {
            what: what.into(),
            status,
        }
    }

    pub fn bad_response(what: impl Into<String>, message: impl Into<String>) -> Self {
        Self::BadResponse {
            what: what.into(),
            message: message.into(),
        }
    }

    /// The gRPC code of a failed service call, wherever it is wrapped.
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Rpc { status, .. } => Some(status.code()),
            Self::Step { error, .. } => error.code(),
            _ => None,
        }
    }

    /// Whether the failure is in the batch's numbers (non-finite rewards, advantages or
    /// returns; head rewards the robust objective refuses; a service reporting DATA_LOSS for
    /// its model's non-finite output), found before anything was trained:
    /// the run rolls the step back and pauses instead of failing.
    pub fn pauses_run(&self) -> bool {
        match self {
            Self::NonFinite { .. }
            | Self::Objective(_)
            | Self::Restarted { .. }
            | Self::Diverged { .. } => true,
            // A service whose model's output is corrupt (non-finite) says so with DATA_LOSS.
            Self::Rpc { status, .. } => status.code() == tonic::Code::DataLoss,
            Self::Step { error, .. } => error.pauses_run(),
            _ => false,
        }
    }

    /// Whether a trained service restarted under the operation.
    pub fn is_restart(&self) -> bool {
        match self {
            Self::Restarted { .. } => true,
            Self::Step { error, .. } => error.is_restart(),
            _ => false,
        }
    }

    /// Whether the actor's or critic's weights may be corrupt (training diverged).
    pub fn is_divergence(&self) -> bool {
        match self {
            Self::Diverged { .. } => true,
            Self::Step { error, .. } => error.is_divergence(),
            _ => false,
        }
    }

    /// Whether repeating the operation later may succeed: a service call that failed
    /// transiently (even one whose retries ran out — the service may come back).
    pub fn is_retryable(&self) -> bool {
        self.code().is_some_and(is_transient_code)
    }
}

impl From<rrlhf_runtime::ConfigError> for OrchestratorError {
    fn from(e: rrlhf_runtime::ConfigError) -> Self {
        match e {
            rrlhf_runtime::ConfigError::Invalid { field, message } => {
                Self::Invalid { field, message }
            }
            rrlhf_runtime::ConfigError::Load(message) => Self::invalid("config", message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_failures_keep_their_code_through_a_step() {
        let e = OrchestratorError::Step {
            step: 3,
            error: Box::new(OrchestratorError::rpc(
                "actor Train",
                Status::unavailable("down"),
            )),
        };
        assert_eq!(e.to_string(), "step 3: actor Train: down");
        assert_eq!(e.code(), Some(Code::Unavailable));
        assert!(e.is_retryable());
        let fatal = OrchestratorError::rpc("actor Train", Status::invalid_argument("bad"));
        assert!(!fatal.is_retryable());
        assert!(!OrchestratorError::NotPaused.is_retryable());
    }

    #[test]
    fn body_errors_name_the_path_when_known() {
        let error = serde_json::from_str::<u32>("x").unwrap_err();
        let top = OrchestratorError::Body {
            path: ".".into(),
            error,
        };
        assert!(top.to_string().starts_with("invalid JSON body: "));
        let error = serde_json::from_str::<u32>("x").unwrap_err();
        let field = OrchestratorError::Body {
            path: "run.steps".into(),
            error,
        };
        assert!(field.to_string().starts_with("run.steps: "));
    }
}
