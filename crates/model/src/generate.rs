//! Batched autoregressive sampling with a KV cache: prompts of mixed length are left-padded into
//! one batch, finished rows are dropped from the cache as they end, and each finished sample is
//! handed to a callback at once (the actor service streams them from there).

use rrlhf_robust::rng::Rng;
use tch::{Kind, Tensor};

use crate::batch::{Batch, PadSide};
use crate::causal_lm::CausalLm;
use crate::error::{ModelError, Result};
use crate::kv_cache::KvCache;

/// How to pick each next token.
#[derive(Debug, Clone)]
pub struct SamplingParams {
    /// 0 means greedy (argmax); otherwise logits are divided by it.
    pub temperature: f64,
    /// Keep only the k most likely tokens; 0 disables.
    pub top_k: i64,
    /// Keep the smallest set of tokens whose probability reaches p; 1 disables.
    pub top_p: f64,
    pub max_new_tokens: usize,
    /// The stop tokens cannot be drawn before a row has this many new tokens (transformers'
    /// `min_new_tokens`): their logits are masked out of the distribution, and the reported
    /// log-probs are those of the masked distribution. 0 disables.
    pub min_new_tokens: usize,
    /// Generation of a row ends after it emits one of these (the stop token is kept).
    pub stop_ids: Vec<i64>,
    /// Seeds this request's own generator (reproducible whatever else the process does);
    /// unseeded requests draw a seed from the clock.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            max_new_tokens: 64,
            min_new_tokens: 0,
            stop_ids: vec![],
            seed: None,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::InvalidInput(m));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(format!("temperature must be ≥ 0, got {}", self.temperature));
        }
        if self.top_k < 0 {
            return bad(format!("top_k must be ≥ 0, got {}", self.top_k));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens must be ≥ 1".into());
        }
        if self.min_new_tokens > self.max_new_tokens {
            return bad(format!(
                "min_new_tokens ({}) exceeds max_new_tokens ({})",
                self.min_new_tokens, self.max_new_tokens
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token was emitted.
    Stop,
    /// `max_new_tokens` was reached.
    Length,
}

/// One finished sample.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Index of the prompt in the request.
    pub index: usize,
    pub tokens: Vec<i64>,
    /// Log-probability of each token under the distribution it was drawn from (after
    /// temperature and top-k/top-p; the raw model distribution when greedy).
    pub logprobs: Vec<f32>,
    pub finish: FinishReason,
}

/// Picks one token per row from `[B, V]` logits; returns (tokens `[B]`, logprobs `[B]`).
///
/// Sampling inverts each row's CDF at a uniform draw from `rng`, so only B random numbers
/// cross from the host and results do not depend on libtorch's global generator (which other
/// threads may be using).
pub fn sample_next(logits: &Tensor, p: &SamplingParams, rng: &mut Rng) -> Result<(Tensor, Tensor)> {
    let logits = logits.f_to_kind(Kind::Float)?;
    if p.temperature == 0.0 {
        let tokens = logits.f_argmax(-1, false)?;
        let logp = logits.f_log_softmax(-1, Kind::Float)?;
        let chosen = logp
            .f_gather(-1, &tokens.unsqueeze(-1), false)?
            .squeeze_dim(-1);
        return Ok((tokens, chosen));
    }
    let mut scores = logits / p.temperature;
    let vocab = scores.size()[1];
    if p.top_k > 0 && p.top_k < vocab {
        let (kth, _) = scores.f_topk(p.top_k, -1, true, true)?;
        let threshold = kth.narrow(1, p.top_k - 1, 1);
        scores = scores.f_masked_fill(&scores.lt_tensor(&threshold), f64::NEG_INFINITY)?;
    }
    if p.top_p < 1.0 {
        let (sorted, order) = scores.f_sort(-1, true)?;
        let cum = sorted.softmax(-1, Kind::Float).cumsum(-1, Kind::Float);
        // Drop a token when the mass before it already reaches p; the top token always stays.
        let before = &cum - sorted.softmax(-1, Kind::Float);
        let drop_sorted = before.ge(p.top_p);
        let drop = drop_sorted
            .zeros_like()
            .f_scatter(-1, &order, &drop_sorted)?;
        scores = scores.f_masked_fill(&drop, f64::NEG_INFINITY)?;
    }
    let logp = scores.f_log_softmax(-1, Kind::Float)?;
    let cdf = logp.exp().f_cumsum(-1, Kind::Float)?;
    let rows = cdf.size()[0];
    let draws: Vec<f32> = (0..rows).map(|_| rng.uniform() as f32).collect();
    // Scale by the row total so rounding in the cumulative sum cannot leave u above the end.
    let u = Tensor::from_slice(&draws)
        .to_device(cdf.device())
        .unsqueeze(-1)
        * cdf.narrow(1, vocab - 1, 1);
    let tokens = u
        .f_searchsorted(&cdf, false, false, "left", None::<Tensor>)?
        .clamp_max(vocab - 1);
    let chosen = logp.f_gather(-1, &tokens, false)?.squeeze_dim(-1);
    Ok((tokens.squeeze_dim(-1), chosen))
}

/// Generates continuations of `prompts` (token ids, any lengths) and calls `on_done` for each
/// sample as soon as it finishes. Returns the samples in prompt order.
pub fn generate(
    model: &CausalLm,
    prompts: &[Vec<i64>],
    pad_id: i64,
    params: &SamplingParams,
    mut on_done: impl FnMut(&Generation),
) -> Result<Vec<Generation>> {
    params.validate()?;
    let seed = params.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let mut rng = Rng::new(seed);
    let _guard = tch::no_grad_guard();
    let device = model.device();
    let batch = Batch::pad(prompts, pad_id, PadSide::Left, device)?;
    let vocab = model.cfg.vocab_size;
    if let Some(bad) = prompts.iter().flatten().find(|&&t| t < 0 || t >= vocab) {
        return Err(ModelError::InvalidInput(format!(
            "token id {bad} is outside the vocabulary (size {vocab})"
        )));
    }
    let mut cache = KvCache::new(model.backbone.num_layers());
    let mut mask = batch.mask.shallow_clone();
    let mut positions = batch.positions.narrow(1, batch.width() - 1, 1);
    let mut logits = model
        .logits(&batch.ids, Some(&mask), &batch.positions, Some(&mut cache))
        .select(1, batch.width() - 1);

    // `rows[i]` is the prompt index of cache row i; finished rows are removed.
    let mut rows: Vec<usize> = (0..prompts.len()).collect();
    let mut out: Vec<Option<Generation>> = vec![None; prompts.len()];
    let mut tokens: Vec<Vec<i64>> = vec![vec![]; prompts.len()];
    let mut logprobs: Vec<Vec<f32>> = vec![vec![]; prompts.len()];
    // The stop tokens masked out of the first `min_new_tokens` steps.
    let early_stops = (params.min_new_tokens > 0 && !params.stop_ids.is_empty())
        .then(|| Tensor::from_slice(&params.stop_ids).to_device(device));
    for step in 0..params.max_new_tokens {
        if let Some(stops) = early_stops
            .as_ref()
            .filter(|_| step < params.min_new_tokens)
        {
            let _ = logits.f_index_fill_(1, stops, f64::NEG_INFINITY)?;
        }
        let (next, next_logp) = sample_next(&logits, params, &mut rng)?;
        let next_ids = Vec::<i64>::try_from(&next)?;
        let next_lp = Vec::<f32>::try_from(&next_logp)?;
        let mut keep = Vec::with_capacity(rows.len());
        for (r, &prompt) in rows.iter().enumerate() {
            tokens[prompt].push(next_ids[r]);
            logprobs[prompt].push(next_lp[r]);
            let finish = if params.stop_ids.contains(&next_ids[r]) {
                Some(FinishReason::Stop)
            } else if step + 1 == params.max_new_tokens {
                Some(FinishReason::Length)
            } else {
                None
            };
            match finish {
                Some(finish) => {
                    let g = Generation {
                        index: prompt,
                        tokens: std::mem::take(&mut tokens[prompt]),
                        logprobs: std::mem::take(&mut logprobs[prompt]),
                        finish,
                    };
                    on_done(&g);
                    out[prompt] = Some(g);
                }
                None => keep.push(r as i64),
            }
        }
        if keep.is_empty() {
            break;
        }
        let mut next = next.unsqueeze(-1);
        if keep.len() < rows.len() {
            let idx = Tensor::from_slice(&keep).to_device(device);
            cache.select_rows(&idx);
            mask = mask.index_select(0, &idx);
            positions = positions.index_select(0, &idx);
            next = next.index_select(0, &idx);
            rows = keep.iter().map(|&r| rows[r as usize]).collect();
        }
        mask = Tensor::cat(&[&mask, &mask.ones_like().narrow(1, 0, 1)], 1);
        positions += 1;
        logits = model
            .logits(&next, Some(&mask), &positions, Some(&mut cache))
            .select(1, 0);
    }
    Ok(out
        .into_iter()
        .map(|g| g.expect("every row finishes by max_new_tokens"))
        .collect())
}
