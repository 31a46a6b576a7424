//! `SaveCheckpoint` / `LoadCheckpoint` for every training service (actor, critic): the same
//! validation and error mapping, whatever the engine's work type.

use std::path::PathBuf;

use rrlhf_proto::common::v1::{
    LoadCheckpointRequest, LoadCheckpointResponse, SaveCheckpointRequest, SaveCheckpointResponse,
};
use tonic::{Response, Status};

use crate::engine::{Engine, EngineError};
use crate::validate::invalid;

/// Validates the target and runs the engine's save item built by `work`.
pub async fn save<I: Send + 'static, O: Send + 'static>(
    engine: &Engine<I, O>,
    req: SaveCheckpointRequest,
    work: impl FnOnce(PathBuf) -> I,
) -> Result<Response<SaveCheckpointResponse>, Status> {
    if req.path.trim().is_empty() {
        return Err(invalid("path", "must not be empty"));
    }
    engine.submit(vec![work(PathBuf::from(&req.path))]).await?;
    Ok(Response::new(SaveCheckpointResponse { path: req.path }))
}

/// Checks that `path` is a model directory (when `check_here`; data-parallel ranks leave it to
/// their engines, which agree on it) and runs the engine's load item built by `work`.
/// A checkpoint the model rejects (other shapes or names) is the caller's mistake, so it is
/// INVALID_ARGUMENT, not INTERNAL; the engine validates before copying, so weights are intact.
pub async fn load<I: Send + 'static, O: Send + 'static>(
    engine: &Engine<I, O>,
    req: LoadCheckpointRequest,
    check_here: bool,
    work: impl FnOnce(PathBuf) -> I,
) -> Result<Response<LoadCheckpointResponse>, Status> {
    let path = PathBuf::from(req.path);
    if check_here && !path.join("config.json").exists() {
        return Err(invalid(
            "path",
            format!("{} is not a checkpoint directory", path.display()),
        ));
    }
    match engine.submit(vec![work(path)]).await {
        Ok(_) => Ok(Response::new(LoadCheckpointResponse {})),
        Err(EngineError::Failed(msg)) => Err(invalid("path", msg)),
        Err(e) => Err(e.into()),
    }
}
