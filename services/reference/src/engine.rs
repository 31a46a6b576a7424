//! The reference service's engine: the frozen SFT policy on its engine thread. Each item is one
//! (prompt, response) pair; concurrent requests share model batches.

use rrlhf_model::{CausalLm, ModelError, Placement};
use rrlhf_runtime::engine::LoadError;

use crate::config::ReferenceServiceConfig;

pub type Pair = (Vec<i64>, Vec<i64>);

/// Loads the model frozen (no gradients, ever) and runs a warm-up pass; reports the vocabulary
/// size.
pub fn load(cfg: &ReferenceServiceConfig) -> Result<(CausalLm, i64), LoadError> {
    let e = &cfg.engine;
    let placement = Placement::for_engine(&e.device, &e.dtype, e.threads).map_err(LoadError::of)?;
    let mut model = CausalLm::from_dir(&cfg.model, placement).map_err(LoadError::of)?;
    model.vs.freeze();
    logprobs(&model, &[(vec![0], vec![0])]).map_err(|e| LoadError(format!("warm-up: {e}")))?;
    let vocab = model.cfg.vocab_size;
    Ok((model, vocab))
}

/// log π₀(response token | everything before it) of every pair.
pub fn logprobs(model: &CausalLm, pairs: &[Pair]) -> Result<Vec<Vec<f32>>, ModelError> {
    let _guard = tch::no_grad_guard();
    model.response_logprobs(pairs)
}
