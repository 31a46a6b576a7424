//! The reward scoring engine: (prompt, response) texts → every head's (μ, σ), the nominal head
//! and reward, min/max/mean/median and the reward of a requested aggregation strategy.
//!
//! Samples are tokenised as `prompt + response + EOS` (the reward is read at the EOS), sorted
//! by length into padded passes of at most `batch_size` rows and 25 % padding
//! ([`crate::batch::padded_passes`]), and put back in request order. A sample's head outputs
//! do not depend on which other samples share its batch.

use rrlhf_robust::strategy::Aggregated;
use rrlhf_robust::{HeadOutputs, Strategy, UncertaintySet, aggregate};

use crate::batch::{Batch, PadSide, PassLimits, rows_f32};
use crate::error::{ModelError, Result};
use crate::reward_model::RewardModel;
use crate::tokenizer::TextTokenizer;

/// What to do with a sample longer than the model's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlong {
    /// An error naming the sample.
    Reject,
    /// Keep the prompt's tail and the response's head (see [`TextTokenizer::encode_pair`]).
    Truncate,
}

/// One scored sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub heads: HeadOutputs,
    pub aggregated: Aggregated,
}

/// Padding a scoring pass may carry, as a fraction of its real tokens, before it is cut: a
/// batch merged from concurrent requests mixes lengths, and at these sizes a few more passes
/// cost less than scoring padding (`bench/README.md`, reward service).
const MAX_PADDING: f64 = 0.25;

#[derive(Debug)]
pub struct RewardScorer {
    pub model: RewardModel,
    pub tokenizer: TextTokenizer,
    pub max_len: usize,
    pub batch_size: usize,
    pub overlong: Overlong,
}

impl RewardScorer {
    /// Token ids of each sample, validated against the length limit.
    pub fn encode(&self, samples: &[(String, String)]) -> Result<Vec<Vec<i64>>> {
        samples
            .iter()
            .enumerate()
            .map(|(i, (prompt, response))| {
                if response.trim().is_empty() {
                    return Err(ModelError::InvalidInput(format!(
                        "sample {i}: the response is empty"
                    )));
                }
                let (ids, full_len) = self.tokenizer.encode_pair(prompt, response, self.max_len)?;
                if full_len > self.max_len && self.overlong == Overlong::Reject {
                    return Err(ModelError::InvalidInput(format!(
                        "sample {i}: {full_len} tokens exceed the maximum length {}",
                        self.max_len
                    )));
                }
                Ok(ids)
            })
            .collect()
    }

    /// Head outputs of already tokenised sequences, in input order.
    pub fn heads_of_ids(&self, seqs: &[Vec<i64>]) -> Result<Vec<HeadOutputs>> {
        let vocab = self.model.cfg.vocab_size;
        if let Some((i, t)) = seqs
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.iter().find(|&&t| t < 0 || t >= vocab).map(|t| (i, *t)))
        {
            return Err(ModelError::InvalidInput(format!(
                "sample {i}: token id {t} is outside the vocabulary (size {vocab})"
            )));
        }
        let lengths: Vec<usize> = seqs.iter().map(Vec::len).collect();
        let passes = crate::batch::padded_passes(
            &lengths,
            &PassLimits {
                max_tokens: crate::batch::SCORING_BATCH_TOKENS,
                max_rows: self.batch_size.max(1),
                max_padding: MAX_PADDING,
            },
        );
        let mut out: Vec<Option<HeadOutputs>> = vec![None; seqs.len()];
        let _guard = tch::no_grad_guard();
        for chunk in &passes {
            // Between passes: a batch whose callers all gave up stops here.
            if rrlhf_util::cancel::abandoned() {
                return Err(ModelError::Abandoned);
            }
            let batch_seqs: Vec<Vec<i64>> = chunk.iter().map(|&i| seqs[i].clone()).collect();
            let batch = Batch::pad(
                &batch_seqs,
                self.tokenizer.pad_id,
                PadSide::Right,
                self.model.vs.device(),
            )?;
            let r = self.model.forward(&batch)?;
            let (mu, sigma) = (rows_f32(&r.mu)?, rows_f32(&r.sigma)?);
            for ((&i, mu), sigma) in chunk.iter().zip(mu).zip(sigma) {
                out[i] = Some(HeadOutputs { mu, sigma });
            }
        }
        Ok(out
            .into_iter()
            .map(|h| h.expect("every sample scored"))
            .collect())
    }

    /// Scores (prompt, response) pairs and aggregates them with `strategy`.
    pub fn score(
        &self,
        samples: &[(String, String)],
        strategy: Strategy,
        set: UncertaintySet,
        seed: u64,
    ) -> Result<Vec<Scored>> {
        let heads = self.heads_of_ids(&self.encode(samples)?)?;
        let aggregated = aggregate(&heads, strategy, set, seed)
            .map_err(|e| ModelError::InvalidInput(e.to_string()))?;
        Ok(heads
            .into_iter()
            .zip(aggregated)
            .map(|(heads, aggregated)| Scored { heads, aggregated })
            .collect())
    }
}
