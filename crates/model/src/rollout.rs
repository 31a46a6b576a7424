//! The rollout engine: continuous batching over a preallocated KV cache.
//!
//! A request's prompts wait in a queue; up to `slots` of them decode together, one token per
//! row per step. When a row finishes, its slot goes to the next waiting prompt (prefilled in
//! length-sorted passes), or, when none waits, the last active slot moves into the hole so the
//! active rows always fill slots `0..A` and a decode step reads contiguous views of the cache.
//! So a request of many prompts runs as a stream through the slots rather than as one padded
//! batch whose every row waits for the longest.
//!
//! Each prompt samples from its own generator, and a row's computation does not depend on the
//! other rows beyond floating-point rounding of batched kernels, so a prompt gets the tokens
//! and log-probs it would get alone (checked in `tests/it/rollout.rs`). The one host sync per
//! step copies the sampled tokens back, which the stop check and streaming need.

use std::collections::VecDeque;

use rrlhf_util::rng::Rng;
use tch::{Kind, Tensor};

use crate::batch::{Batch, PadSide, length_buckets};
use crate::causal_lm::CausalLm;
use crate::error::{ModelError, Result};
use crate::generate::{FinishReason, Generation, SamplingParams, sample_next};
use crate::kv_cache::{CacheStep, KvCache};

/// Sizes of the engine's working set.
#[derive(Debug, Clone)]
pub struct RolloutOptions {
    /// Most rows decoding at once.
    pub max_slots: usize,
    /// Bytes the KV cache may take; fewer slots are used when `max_slots` rows of the longest
    /// prompt plus `max_new_tokens` would not fit (at least one slot always runs).
    pub kv_cache_bytes: i64,
    /// Padded tokens per prefill pass.
    pub prefill_tokens: usize,
}

impl Default for RolloutOptions {
    fn default() -> Self {
        Self {
            max_slots: 256,
            kv_cache_bytes: 4 << 30,
            prefill_tokens: crate::batch::SCORING_BATCH_TOKENS,
        }
    }
}

/// One prompt decoding in a slot.
struct Row {
    prompt: usize,
    rng: Rng,
    /// Positions in the slot's cache (prompt plus fed-back tokens).
    len: i64,
    tokens: Vec<i64>,
    logprobs: Vec<f32>,
    policy_logprobs: Vec<f32>,
}

/// Like [`crate::generate()`], with prompt `i` sampling from `Rng::new(seeds[i])` and the
/// engine sized by `opts`.
pub fn generate_seeded(
    model: &CausalLm,
    prompts: &[Vec<i64>],
    seeds: &[u64],
    pad_id: i64,
    params: &SamplingParams,
    opts: &RolloutOptions,
    mut on_done: impl FnMut(&Generation),
) -> Result<Vec<Generation>> {
    params.validate()?;
    check_prompts(model, prompts, seeds)?;
    if prompts.is_empty() {
        return Ok(vec![]);
    }
    let _guard = tch::no_grad_guard();
    let device = model.device();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0) as i64;
    let capacity = longest + params.max_new_tokens as i64;
    let per_slot = KvCache::bytes(&model.cfg, 1, capacity, model.kind()).max(1);
    let slots = (opts.kv_cache_bytes / per_slot)
        .clamp(1, opts.max_slots.max(1) as i64)
        .min(prompts.len() as i64);
    let cache = KvCache::new(&model.cfg, slots, capacity, model.kind(), device);
    let stops = (params.min_new_tokens > 0 && !params.stop_ids.is_empty())
        .then(|| Tensor::from_slice(&params.stop_ids).to_device(device));

    let mut waiting: VecDeque<usize> = (0..prompts.len()).collect();
    let mut out: Vec<Option<Generation>> = vec![None; prompts.len()];
    let mut rows: Vec<Row> = Vec::new();
    // Waiting prompts take the free slots, at the start and after every step.
    let mut admit_waiting = |rows: &mut Vec<Row>| {
        admit(
            model,
            &cache,
            prompts,
            seeds,
            pad_id,
            opts,
            &mut waiting,
            rows,
        )
    };
    let mut logits = admit_waiting(&mut rows)?;
    let reshaped = params.reshapes();
    while let Some(mut step_logits) = logits.take() {
        // Between decoding steps: a batch whose callers all gave up stops here.
        if rrlhf_util::cancel::abandoned() {
            return Err(ModelError::Abandoned);
        }
        // The model's own log-probs, before the mask and the sampler reshape the logits.
        let model_logp = reshaped.then(|| step_logits.log_softmax(-1, Kind::Float));
        if let Some(stops) = &stops {
            mask_early_stops(&mut step_logits, &rows, stops, params.min_new_tokens)?;
        }
        let uniforms: Vec<f64> = if params.temperature == 0.0 {
            vec![0.0; rows.len()]
        } else {
            rows.iter_mut().map(|r| r.rng.uniform()).collect()
        };
        let (next, next_logp) = sample_next(&step_logits, params, &uniforms)?;
        let next_ids = Vec::<i64>::try_from(&next)?;
        let next_lp = Vec::<f32>::try_from(&next_logp)?;
        let next_policy_lp = match &model_logp {
            Some(logp) => {
                Vec::<f32>::try_from(logp.gather(-1, &next.unsqueeze(-1), false).squeeze_dim(-1))?
            }
            None => next_lp.clone(),
        };

        // Record the tokens; finished rows leave, the others feed their last token back.
        let mut live: Vec<(i64, Row)> = Vec::with_capacity(rows.len());
        for (slot, mut row) in rows.drain(..).enumerate() {
            let token = next_ids[slot];
            row.tokens.push(token);
            row.logprobs.push(next_lp[slot]);
            row.policy_logprobs.push(next_policy_lp[slot]);
            let finish = if params.stop_ids.contains(&token) {
                Some(FinishReason::Stop)
            } else if row.tokens.len() == params.max_new_tokens {
                Some(FinishReason::Length)
            } else {
                None
            };
            match finish {
                Some(finish) => {
                    let g = Generation {
                        index: row.prompt,
                        tokens: row.tokens,
                        logprobs: row.logprobs,
                        policy_logprobs: row.policy_logprobs,
                        finish,
                    };
                    on_done(&g);
                    let index = g.index;
                    out[index] = Some(g);
                }
                None => live.push((slot as i64, row)),
            }
        }
        rows = compact(&cache, live);

        // Continuing rows decode one token; waiting prompts take the free slots.
        let mut parts: Vec<Tensor> = Vec::with_capacity(2);
        if !rows.is_empty() {
            let lens: Vec<i64> = rows.iter().map(|r| r.len).collect();
            let ids: Vec<i64> = rows.iter().map(|r| r.tokens[r.tokens.len() - 1]).collect();
            let n = rows.len() as i64;
            let ids = Tensor::from_slice(&ids).to_device(device).view([n, 1]);
            let positions = Tensor::from_slice(&lens).to_device(device).view([n, 1]);
            let step = CacheStep::Decode {
                cache: &cache,
                lens: &lens,
            };
            parts.push(
                model
                    .logits(&ids, None, &positions, Some(step))
                    .select(1, 0),
            );
            for row in &mut rows {
                row.len += 1;
            }
        }
        if let Some(admitted) = admit_waiting(&mut rows)? {
            parts.push(admitted);
        }
        if !parts.is_empty() {
            logits = Some(Tensor::cat(&parts, 0));
        }
    }
    Ok(out
        .into_iter()
        .map(|g| g.expect("every prompt finishes by max_new_tokens"))
        .collect())
}

fn check_prompts(model: &CausalLm, prompts: &[Vec<i64>], seeds: &[u64]) -> Result<()> {
    let vocab = model.cfg.vocab_size;
    if seeds.len() != prompts.len() {
        return Err(ModelError::InvalidInput(format!(
            "{} seeds for {} prompts",
            seeds.len(),
            prompts.len()
        )));
    }
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(ModelError::InvalidInput(format!("prompt {i} is empty")));
    }
    if let Some(bad) = prompts.iter().flatten().find(|&&t| t < 0 || t >= vocab) {
        return Err(ModelError::InvalidInput(format!(
            "token id {bad} is outside the vocabulary (size {vocab})"
        )));
    }
    Ok(())
}

/// Moves the rows whose slots lie at or above `live.len()` into the free slots below it, so
/// the live rows (given with their slots, in slot order) fill slots `0..live.len()` and a
/// decode step reads contiguous views of the cache; returns the rows in their new slot order.
fn compact(cache: &KvCache, live: Vec<(i64, Row)>) -> Vec<Row> {
    let n = live.len() as i64;
    let mut placed: Vec<Option<Row>> = (0..n).map(|_| None).collect();
    let mut strays = Vec::new();
    for (slot, row) in live {
        if slot < n {
            placed[slot as usize] = Some(row);
        } else {
            strays.push((slot, row));
        }
    }
    let mut strays = strays.into_iter();
    for (hole, place) in placed.iter_mut().enumerate().filter(|(_, p)| p.is_none()) {
        let (from, row) = strays
            .next()
            .expect("as many rows above n as holes below it");
        cache.move_slot(from, hole as i64, row.len);
        *place = Some(row);
    }
    placed
        .into_iter()
        .map(|r| r.expect("every slot below n is filled"))
        .collect()
}

/// Prefills waiting prompts into the free slots `rows.len()..slots`, in length-sorted passes,
/// appends their rows, and returns their next-token logits (rows in slot order), or `None`
/// when nothing was admitted.
#[allow(clippy::too_many_arguments)]
fn admit(
    model: &CausalLm,
    cache: &KvCache,
    prompts: &[Vec<i64>],
    seeds: &[u64],
    pad_id: i64,
    opts: &RolloutOptions,
    waiting: &mut VecDeque<usize>,
    rows: &mut Vec<Row>,
) -> Result<Option<Tensor>> {
    let free = (cache.slots() as usize).saturating_sub(rows.len());
    let take = free.min(waiting.len());
    if take == 0 {
        return Ok(None);
    }
    let first_slot = rows.len() as i64;
    let admitted: Vec<usize> = waiting.drain(..take).collect();
    let device = model.device();
    let lengths: Vec<usize> = admitted.iter().map(|&p| prompts[p].len()).collect();
    let mut logits = Tensor::zeros([take as i64, model.cfg.vocab_size], (Kind::Float, device));
    for pass in length_buckets(&lengths, opts.prefill_tokens) {
        let seqs: Vec<Vec<i64>> = pass.iter().map(|&i| prompts[admitted[i]].clone()).collect();
        let batch = Batch::pad(&seqs, pad_id, PadSide::Right, device)?;
        let slots: Vec<i64> = pass.iter().map(|&i| first_slot + i as i64).collect();
        let last: Vec<i64> = pass.iter().map(|&i| lengths[i] as i64 - 1).collect();
        let step = CacheStep::Prefill {
            cache,
            slots: &slots,
        };
        let pass_logits = model.logits_at(&batch.ids, &batch.positions, Some(step), &last);
        let local: Vec<i64> = pass.iter().map(|&i| i as i64).collect();
        logits = logits.index_copy(
            0,
            &Tensor::from_slice(&local).to_device(device),
            &pass_logits,
        );
    }
    rows.extend(admitted.iter().map(|&p| Row {
        prompt: p,
        rng: Rng::new(seeds[p]),
        len: prompts[p].len() as i64,
        tokens: Vec::new(),
        logprobs: Vec::new(),
        policy_logprobs: Vec::new(),
    }));
    Ok(Some(logits))
}

/// Masks the stop tokens out of the rows that have fewer than `min_new` tokens.
fn mask_early_stops(
    logits: &mut Tensor,
    rows: &[Row],
    stops: &Tensor,
    min_new: usize,
) -> Result<()> {
    let early: Vec<i64> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.tokens.len() < min_new)
        .map(|(i, _)| i as i64)
        .collect();
    if early.is_empty() {
        return Ok(());
    }
    let device = logits.device();
    let early = Tensor::from_slice(&early).to_device(device).view([-1, 1]);
    let neg_inf = Tensor::from(f32::NEG_INFINITY).to_device(device);
    let _ = logits.f_index_put_(&[Some(early), Some(stops.view([1, -1]))], &neg_inf, false)?;
    Ok(())
}
