//! Padding token sequences of mixed lengths into one `[B, T]` batch.

use tch::{Device, Kind, Tensor};

use crate::error::{ModelError, Result};
use crate::mask::positions_from_mask;

/// Which side padding goes on: left for generation (prompts end together), right for training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PadSide {
    Left,
    Right,
}

/// A padded batch: ids, 0/1 attention mask and matching position ids, all `[B, T]` i64.
#[derive(Debug)]
pub struct Batch {
    pub ids: Tensor,
    pub mask: Tensor,
    pub positions: Tensor,
    /// Length of each row before padding.
    pub lengths: Vec<usize>,
}

impl Batch {
    pub fn pad(seqs: &[Vec<i64>], pad_id: i64, side: PadSide, device: Device) -> Result<Self> {
        if seqs.is_empty() {
            return Err(ModelError::InvalidInput("empty batch".into()));
        }
        if let Some(i) = seqs.iter().position(Vec::is_empty) {
            return Err(ModelError::InvalidInput(format!("sequence {i} is empty")));
        }
        let width = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(seqs.len() * width);
        let mut mask = Vec::with_capacity(seqs.len() * width);
        for s in seqs {
            let pad = width - s.len();
            let (real_ids, real_mask) = (s.iter().copied(), std::iter::repeat_n(1i64, s.len()));
            let (pad_ids, pad_mask) = (
                std::iter::repeat_n(pad_id, pad),
                std::iter::repeat_n(0i64, pad),
            );
            match side {
                PadSide::Left => {
                    ids.extend(pad_ids.chain(real_ids));
                    mask.extend(pad_mask.chain(real_mask));
                }
                PadSide::Right => {
                    ids.extend(real_ids.chain(pad_ids));
                    mask.extend(real_mask.chain(pad_mask));
                }
            }
        }
        let shape = [seqs.len() as i64, width as i64];
        let ids = Tensor::from_slice(&ids).view(shape).to_device(device);
        let mask = Tensor::from_slice(&mask).view(shape).to_device(device);
        let positions = positions_from_mask(&mask);
        Ok(Self {
            ids,
            mask,
            positions,
            lengths: seqs.iter().map(Vec::len).collect(),
        })
    }

    /// True when no row has padding, so plain causal attention can skip the explicit mask.
    pub fn is_dense(&self) -> bool {
        self.lengths.iter().all(|&l| l as i64 == self.ids.size()[1])
    }

    /// The mask to pass to the model: `None` when the batch has no padding.
    pub fn attention_mask(&self) -> Option<&Tensor> {
        (!self.is_dense()).then_some(&self.mask)
    }

    pub fn width(&self) -> i64 {
        self.ids.size()[1]
    }
}

/// Reads a `[B, T]` tensor of any float kind into rows of f32.
pub fn rows_f32(t: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(Vec::<Vec<f32>>::try_from(
        t.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?,
    )?)
}

/// Padded tokens per forward pass when a call scores many sequences (log-probs, values): the
/// services' default `engine.batch_max_tokens`.
pub const SCORING_BATCH_TOKENS: usize = 16_384;

/// Splits items of the given `lengths` into forward passes: sorted by length (ties in input
/// order), then cut so that each pass's padded size (items × its longest) stays within
/// `max_tokens` (a longer single item gets a pass of its own). Returns each pass's indices into
/// `lengths`. Sorting keeps padding small when a call mixes short and long sequences; the
/// passes depend only on the lengths, so a call's results do not depend on timing.
pub fn length_buckets(lengths: &[usize], max_tokens: usize) -> Vec<Vec<usize>> {
    padded_passes(
        lengths,
        &PassLimits {
            max_tokens,
            max_rows: usize::MAX,
            max_padding: f64::INFINITY,
        },
    )
}

/// Bounds of one forward pass over sequences of mixed lengths.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PassLimits {
    /// Padded tokens (rows × the longest) per pass.
    pub max_tokens: usize,
    /// Rows per pass.
    pub max_rows: usize,
    /// Padding as a fraction of the real tokens a pass may carry before it is cut: a batch
    /// merged from concurrent requests mixes lengths, and padding is work thrown away.
    pub max_padding: f64,
}

/// [`length_buckets`] with every bound of `limits`: sorted by length, cut when the next item
/// would exceed the padded-token budget, the row count or the padding share. Depends only on
/// the lengths.
pub fn padded_passes(lengths: &[usize], limits: &PassLimits) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut real = 0usize;
    for i in order {
        // Sorted ascending, so item i is the longest of the pass if it joins.
        let padded = (current.len() + 1) * lengths[i];
        let padding = (padded - (real + lengths[i])) as f64 / (real + lengths[i]).max(1) as f64;
        if !current.is_empty()
            && (padded > limits.max_tokens
                || current.len() >= limits.max_rows
                || padding > limits.max_padding)
        {
            out.push(std::mem::take(&mut current));
            real = 0;
        }
        current.push(i);
        real += lengths[i];
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Runs `pass` over the [`length_buckets`] of `lengths` and returns one output per item, in
/// the items' order (`pass` gets a bucket's indices and returns one output per index).
pub fn by_length_buckets<T>(
    lengths: &[usize],
    max_tokens: usize,
    mut pass: impl FnMut(&[usize]) -> Result<Vec<T>>,
) -> Result<Vec<T>> {
    let mut out: Vec<Option<T>> = (0..lengths.len()).map(|_| None).collect();
    for bucket in length_buckets(lengths, max_tokens) {
        for (i, value) in bucket.iter().zip(pass(&bucket)?) {
            out[*i] = Some(value);
        }
    }
    Ok(out
        .into_iter()
        .map(|v| v.expect("every item is in one bucket, and each pass answers each item"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_are_cut_by_rows_and_padding_too() {
        let limits = |max_rows, max_padding| PassLimits {
            max_tokens: 1000,
            max_rows,
            max_padding,
        };
        let lengths = [10, 100, 11, 9, 98, 12, 101, 10];
        // No padding bound: one pass of everything (8 × 101 ≤ 1000).
        assert_eq!(
            padded_passes(&lengths, &limits(usize::MAX, f64::INFINITY)).len(),
            1
        );
        // A 25 % bound separates the short from the long ones.
        assert_eq!(
            padded_passes(&lengths, &limits(usize::MAX, 0.25)),
            vec![vec![3, 0, 7, 2, 5], vec![4, 1, 6]]
        );
        assert_eq!(
            padded_passes(&lengths, &limits(2, 0.25)),
            vec![vec![3, 0], vec![7, 2], vec![5], vec![4, 1], vec![6]]
        );
    }

    #[test]
    fn buckets_sort_by_length_and_respect_the_budget() {
        let lengths = [5, 100, 3, 7, 100, 2];
        let b = length_buckets(&lengths, 21);
        // 2, 3, 5 (3 × 5 = 15), then 7 alone would make 4 × 7 = 28 > 21, …
        assert_eq!(b, vec![vec![5, 2, 0], vec![3], vec![1], vec![4]]);
        let all: usize = b.iter().map(Vec::len).sum();
        assert_eq!(all, lengths.len());
        let out = by_length_buckets(&lengths, 21, |idx| {
            Ok(idx.iter().map(|&i| lengths[i] * 10).collect())
        })
        .unwrap();
        assert_eq!(
            out,
            vec![50, 1000, 30, 70, 1000, 20],
            "answers in input order"
        );
        assert!(length_buckets(&[], 8).is_empty());
    }
}
