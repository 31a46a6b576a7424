//! Sampling settings, the next-token sampler and the `generate` entry point: continuations of
//! many prompts, each finished sample handed to a callback at once (the actor service streams
//! them from there). The engine underneath is [`crate::rollout`].

use tch::{Kind, Tensor};

use crate::causal_lm::CausalLm;
use crate::error::{ModelError, Result};

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
    /// Whether the distribution tokens are drawn from differs from the model's own, so that
    /// the drawn log-probs are not the policy's (greedy picks report the model's own).
    pub fn reshapes(&self) -> bool {
        self.temperature != 0.0
            && (self.temperature != 1.0
                || self.top_k > 0
                || self.top_p < 1.0
                || (self.min_new_tokens > 0 && !self.stop_ids.is_empty()))
    }

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
    /// Log-probability of each token under the model's own distribution (the raw logits,
    /// before temperature, top-k/top-p and the early-stop mask): what a training forward pass
    /// of the same sequence computes, so PPO can use it as the behaviour log-prob without
    /// recomputing it. Equal to `logprobs` when sampling did not reshape the distribution.
    pub policy_logprobs: Vec<f32>,
    pub finish: FinishReason,
}

/// Picks one token per row from `[B, V]` logits; returns (tokens `[B]`, logprobs `[B]`).
///
/// Sampling inverts each row's CDF at `uniforms[b]` (in (0, 1), one per row; unused when
/// greedy), so only B numbers cross from the host, nothing waits for the device, and each row's
/// draw is its own: results depend neither on libtorch's global generator (which other threads
/// may be using) nor on which other rows share the batch.
pub fn sample_next(
    logits: &Tensor,
    p: &SamplingParams,
    uniforms: &[f64],
) -> Result<(Tensor, Tensor)> {
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
    let rows = cdf.size()[0] as usize;
    if uniforms.len() != rows {
        return Err(ModelError::InvalidInput(format!(
            "{} uniform draws for {rows} rows",
            uniforms.len()
        )));
    }
    let draws: Vec<f32> = uniforms.iter().map(|&u| u as f32).collect();
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
///
/// Runs on the continuous-batching engine ([`crate::rollout`]) with its default options; prompt
/// `i` samples from its own generator, seeded from `params.seed` and `i`
/// ([`prompt_seed`]), so its tokens do not depend on the other prompts of the request.
/// `pad_id` fills the prefill batches' padding (never attended to).
pub fn generate(
    model: &CausalLm,
    prompts: &[Vec<i64>],
    pad_id: i64,
    params: &SamplingParams,
    on_done: impl FnMut(&Generation),
) -> Result<Vec<Generation>> {
    let seed = params.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let seeds: Vec<u64> = (0..prompts.len()).map(|i| prompt_seed(seed, i)).collect();
    crate::rollout::generate_seeded(
        model,
        prompts,
        &seeds,
        pad_id,
        params,
        &crate::rollout::RolloutOptions::default(),
        on_done,
    )
}

/// The sampling seed of prompt `index` in a request seeded with `seed`.
pub fn prompt_seed(seed: u64, index: usize) -> u64 {
    rrlhf_util::rng::stream_seed(seed, index as u64)
}
