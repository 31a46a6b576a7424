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
    capacity: i64,
}

impl KvCache {
    /// An empty cache for `slots` sequences of up to `capacity` positions each.
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
            capacity,
        }
    }

    pub fn slots(&self) -> i64 {
        self.keys.first().map_or(0, |k| k.size()[0])
    }

    pub fn capacity(&self) -> i64 {
        self.capacity
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

/// Index tensors a [`CacheStep`] needs in every layer.
pub(crate) struct StepIndex {
    pub slots: Option<Tensor>,
    pub write_at: Option<Tensor>,
    pub span: i64,
}

impl CacheStep<'_> {
    pub(crate) fn index(&self, device: Device) -> StepIndex {
        match *self {
            CacheStep::Prefill { slots, .. } => StepIndex {
                slots: Some(Tensor::from_slice(slots).to_device(device)),
                write_at: None,
                span: 0,
            },
            CacheStep::Decode { lens, .. } => StepIndex {
                slots: None,
                write_at: Some(
                    Tensor::from_slice(lens)
                        .to_device(device)
                        .view([-1, 1, 1, 1]),
                ),
                span: lens.iter().max().map_or(0, |m| m + 1),
            },
        }
    }

    pub(crate) fn cache(&self) -> &KvCache {
        match *self {
            CacheStep::Prefill { cache, .. } | CacheStep::Decode { cache, .. } => cache,
        }
    }

    pub(crate) fn layer<'a>(&'a self, i: usize, index: &'a StepIndex) -> LayerCache<'a> {
        let (keys, values) = self.cache().layer(i);
        match *self {
            CacheStep::Prefill { .. } => LayerCache::Prefill {
                keys,
                values,
                slots: index.slots.as_ref().expect("prefill index has slots"),
            },
            CacheStep::Decode { lens, .. } => LayerCache::Decode {
                keys,
                values,
                write_at: index.write_at.as_ref().expect("decode index has positions"),
                rows: lens.len() as i64,
                span: index.span,
            },
        }
    }
}
