//! The reward engine: the model thread of [`rrlhf_runtime::engine`] holding a
//! [`RewardScorer`]. Each item is one tokenised sample; concurrent requests are merged into
//! shared model batches, which is where throughput under concurrency comes from.

use std::path::Path;
use std::sync::Arc;

use rrlhf_model::reward_model::{RewardMeta, RewardModel};
use rrlhf_model::scoring::{Overlong, RewardScorer};
use rrlhf_model::{Placement, TextTokenizer};
use rrlhf_robust::HeadOutputs;
use rrlhf_runtime::engine::{Engine, PanicPolicy, Stoppable};

use crate::config::RewardServiceConfig;
use crate::error::ServiceError;

/// What the engine loaded, for `Info` and request validation.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub meta: RewardMeta,
    pub vocab_size: i64,
    pub model_id: String,
}

/// The async side's handle: the engine and what it loaded.
#[derive(Clone, Debug)]
pub struct EngineHandle {
    pub engine: Engine<Vec<i64>, HeadOutputs>,
    pub info: Arc<ModelInfo>,
}

impl Stoppable for EngineHandle {
    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        self.engine.stopped()
    }
}

impl EngineHandle {
    /// Head outputs of already tokenised, validated sequences.
    pub async fn score(&self, seqs: Vec<Vec<i64>>) -> Result<Vec<HeadOutputs>, ServiceError> {
        Ok(self.engine.submit(seqs).await?)
    }
}

/// Loads the model and tokenizer on the engine thread, runs a warm-up pass, and returns once the
/// engine can serve (or with the loading error).
pub fn spawn(
    cfg: &RewardServiceConfig,
    on_panic: PanicPolicy,
) -> Result<(EngineHandle, TextTokenizer), ServiceError> {
    let batch = cfg.engine.batch(on_panic);
    let load_cfg = cfg.clone();
    let (engine, (info, tokenizer)) = Engine::spawn(
        "reward-engine",
        batch,
        move || {
            let scorer = load(&load_cfg)?;
            let info = ModelInfo {
                meta: scorer.model.meta.clone(),
                vocab_size: scorer.model.cfg.vocab_size,
                model_id: load_cfg.model.display().to_string(),
            };
            let tokenizer = scorer.tokenizer.clone();
            Ok::<_, ServiceError>((scorer, (info, tokenizer)))
        },
        |scorer: &RewardScorer, seqs: &[Vec<i64>]| {
            scorer.heads_of_ids(seqs).map_err(|e| e.to_string())
        },
        Vec::len,
    )?;
    Ok((
        EngineHandle {
            engine,
            info: Arc::new(info),
        },
        tokenizer,
    ))
}

fn load(cfg: &RewardServiceConfig) -> Result<RewardScorer, ServiceError> {
    let e = &cfg.engine;
    let placement = Placement::for_engine(&e.device, &e.dtype, e.threads)?;
    let model = RewardModel::from_dir(&cfg.model, placement)?;
    let tokenizer = TextTokenizer::load(Path::new(&cfg.model))?;
    if tokenizer.vocab_size() as i64 > model.cfg.vocab_size {
        return Err(ServiceError::invalid(
            "model",
            "the tokenizer has more tokens than the model's vocabulary",
        ));
    }
    let overlong = match cfg.service.overlong {
        crate::config::Overlong::Truncate => Overlong::Truncate,
        crate::config::Overlong::Reject => Overlong::Reject,
    };
    let scorer = RewardScorer {
        model,
        tokenizer,
        max_len: cfg.max_length,
        batch_size: cfg.engine.batch_max_sequences,
        overlong,
    };
    // Warm-up: the first forward pass allocates and picks kernels; health stays NOT_SERVING
    // until it has run.
    let warm = scorer.encode(&[("warm-up".to_string(), " ok".to_string())])?;
    scorer.heads_of_ids(&warm)?;
    Ok(scorer)
}
