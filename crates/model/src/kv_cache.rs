//! A preallocated key/value cache of fixed slots, kept outside the model so one set of weights
//! can serve many independent generation requests.
//!
//! Each slot holds one sequence, left-aligned (its position `p` at index `p`), so a slot's keys
//! never move while it decodes and a finished slot can take a new prompt without touching the
//! others. Nothing is concatenated per token: a decode step writes one key and value per row
//! in place and attends over a view of the first `span` positions.

use tch::{Device, Kind, Tensor};

use crate::config::ModelConfig;

/// Keys and values of every layer, `[slots, kv_heads, capacity, head_dim]` each, after RoPE and
/// before grouped-query expansion.
#[derive(Debug)]
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
}

impl KvCache {
    /// An empty cache for `slots` sequences of up to `capacity` positions each. Zero-filled, not
    /// left uninitialised: masked positions still enter `q·k`, and garbage there could be NaN,
    /// which no additive mask removes.
    pub fn new(cfg: &ModelConfig, slots: i64, capacity: i64, kind: Kind, device: Device) -> Self {
        let dims = [slots, cfg.num_key_value_heads, capacity, cfg.head_dim];
        let zeros = || -> Vec<Tensor> {
            (0..cfg.num_hidden_layers)
                .map(|_| Tensor::zeros(dims, (kind, device)))
                .collect()
        };
        Self {
            keys: zeros(),
            values: zeros(),
        }
    }

    pub fn slots(&self) -> i64 {
        self.keys.first().map_or(0, |k| k.size()[0])
    }

    /// Bytes a cache of `slots × capacity` positions takes for `cfg` in `kind`.
    pub fn bytes(cfg: &ModelConfig, slots: i64, capacity: i64, kind: Kind) -> i64 {
        2 * cfg.num_hidden_layers
            * slots
            * capacity
            * cfg.num_key_value_heads
            * cfg.head_dim
            * kind.elt_size_in_bytes() as i64
    }

    /// Copies the first `len` positions of slot `from` into slot `to` (compaction).
    pub fn move_slot(&self, from: i64, to: i64, len: i64) {
        for t in self.keys.iter().chain(&self.values) {
            t.get(to)
                .narrow(1, 0, len)
                .copy_(&t.get(from).narrow(1, 0, len));
        }
    }

    pub(crate) fn layer(&self, i: usize) -> (&Tensor, &Tensor) {
        (&self.keys[i], &self.values[i])
    }
}

/// What one forward pass does with a cache.
#[derive(Debug, Clone, Copy)]
pub enum CacheStep<'a> {
    /// Whole prompts, right-padded `[n, T]`, enter the cache: row `i`'s keys and values go to
    /// slot `slots[i]`, positions `0..T` (those past a row's length are never attended to and
    /// are overwritten by its decode steps).
    Prefill {
        cache: &'a KvCache,
        slots: &'a [i64],
    },
    /// One new token for each of slots `0..lens.len()`: row `a`'s token sits at position
    /// `lens[a]` and attends to that slot's positions `0..=lens[a]`.
    Decode { cache: &'a KvCache, lens: &'a [i64] },
}

/// The per-layer form of a [`CacheStep`], with its index tensors built once per pass.
pub(crate) enum LayerCache<'a> {
    Prefill {
        keys: &'a Tensor,
        values: &'a Tensor,
        slots: &'a Tensor,
    },
    Decode {
        keys: &'a Tensor,
        values: &'a Tensor,
        /// `[A, 1, 1, 1]` write positions, expanded to the new keys' shape when used.
        write_at: &'a Tensor,
        rows: i64,
        span: i64,
    },
}

/// A [`CacheStep`]'s tensors, built once per forward pass and shared by every layer.
pub(crate) enum StepIndex {
    Prefill {
        slots: Tensor,
    },
    Decode {
        /// `[A, 1, 1, 1]` write positions.
        write_at: Tensor,
        /// The decode step's additive attention mask ([`crate::mask::decode_mask`]).
        mask: Tensor,
        span: i64,
    },
}

impl StepIndex {
    /// The attention mask the step imposes, if any (a prefill attends causally to itself).
    pub(crate) fn mask(&self) -> Option<&Tensor> {
        match self {
            StepIndex::Prefill { .. } => None,
            StepIndex::Decode { mask, .. } => Some(mask),
        }
    }
}

impl CacheStep<'_> {
    pub(crate) fn index(&self, kind: Kind, device: Device) -> StepIndex {
        match *self {
            CacheStep::Prefill { slots, .. } => StepIndex::Prefill {
                slots: Tensor::from_slice(slots).to_device(device),
            },
            CacheStep::Decode { lens, .. } => {
                let span = lens.iter().max().map_or(0, |m| m + 1);
                let lens = Tensor::from_slice(lens).to_device(device);
                StepIndex::Decode {
                    mask: crate::mask::decode_mask(&lens, span, kind),
                    write_at: lens.view([-1, 1, 1, 1]),
                    span,
                }
            }
        }
    }

    pub(crate) fn layer<'a>(&'a self, i: usize, index: &'a StepIndex) -> LayerCache<'a> {
        let (CacheStep::Prefill { cache, .. } | CacheStep::Decode { cache, .. }) = *self;
        let (keys, values) = cache.layer(i);
        match index {
            StepIndex::Prefill { slots } => LayerCache::Prefill {
                keys,
                values,
                slots,
            },
            StepIndex::Decode { write_at, span, .. } => LayerCache::Decode {
                keys,
                values,
                write_at,
                rows: write_at.size()[0],
                span: *span,
            },
        }
    }
}
