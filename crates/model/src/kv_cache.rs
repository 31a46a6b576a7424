//! Per-request key/value cache, kept outside the model so one set of weights can serve many
//! independent generation batches.

use tch::Tensor;

/// Keys and values of every layer for one batch, `[B, kv_heads, T, head_dim]` each, after RoPE
/// and before grouped-query expansion.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<(Option<Tensor>, Option<Tensor>)>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| (None, None)).collect(),
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> i64 {
        match self.layers.first() {
            Some((Some(k), _)) => k.size()[2],
            _ => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn layer_mut(&mut self, i: usize) -> &mut (Option<Tensor>, Option<Tensor>) {
        &mut self.layers[i]
    }

    /// Keeps only the batch rows in `rows` (used to drop finished sequences).
    pub fn select_rows(&mut self, rows: &Tensor) {
        for (k, v) in &mut self.layers {
            *k = k.as_ref().map(|t| t.index_select(0, rows));
            *v = v.as_ref().map(|t| t.index_select(0, rows));
        }
    }
}
