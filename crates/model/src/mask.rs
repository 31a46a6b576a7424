//! Attention masks and position ids for padded batches (left or right padding).

use tch::{Kind, Tensor};

/// Position ids from a `[B, T]` 0/1 attention mask: each real token's index among the real
/// tokens of its row; pads get 0 (their outputs are never used). This is what transformers'
/// `generate` uses for left-padded prompts.
pub fn positions_from_mask(attention_mask: &Tensor) -> Tensor {
    let mask = attention_mask.to_kind(Kind::Int64);
    let pos = mask.cumsum(1, Kind::Int64) - 1;
    pos.clamp_min(0) * &mask
}

/// Additive mask `[B, 1, Q, K]` in `kind`: 0 where query `q` (at absolute index
/// `past + q`) may attend to key `k`, the dtype's lowest value elsewhere. A key may be seen if
/// it is not after the query and the key is not padding. Rows that see nothing (padding
/// queries) stay finite, so no NaN leaks into the batch.
pub fn causal_padding_mask(key_mask: &Tensor, queries: i64, kind: Kind) -> Tensor {
    let device = key_mask.device();
    let keys = key_mask.size()[1];
    let past = keys - queries;
    let q_idx = Tensor::arange_start(past, keys, (Kind::Int64, device)).view([-1, 1]);
    let k_idx = Tensor::arange(keys, (Kind::Int64, device)).view([1, -1]);
    let causal = k_idx.le_tensor(&q_idx).unsqueeze(0).unsqueeze(0);
    let not_pad = key_mask.to_kind(Kind::Bool).unsqueeze(1).unsqueeze(1);
    let allowed = causal.logical_and(&not_pad);
    additive(&allowed, kind)
}

/// Additive mask `[A, 1, 1, span]` for one decode step over cache slots: row `a`'s query sits
/// at position `lens[a]` (`lens` is `[A]`) and may attend to positions `0..=lens[a]`; `span`
/// covers the longest.
pub fn decode_mask(lens: &Tensor, span: i64, kind: Kind) -> Tensor {
    let keys = Tensor::arange(span, (Kind::Int64, lens.device())).view([1, -1]);
    additive(
        &keys
            .le_tensor(&lens.view([-1, 1]))
            .unsqueeze(1)
            .unsqueeze(1),
        kind,
    )
}

/// 0 where `allowed`, the dtype's lowest finite value elsewhere (so a row that sees nothing
/// stays finite and no NaN leaks into the batch).
fn additive(allowed: &Tensor, kind: Kind) -> Tensor {
    let device = allowed.device();
    let lowest = match kind {
        Kind::BFloat16 => -3.389_531_4e38,
        Kind::Half => -65504.0,
        _ => f32::MIN as f64,
    };
    Tensor::zeros([1], (kind, device))
        .where_self(allowed, &Tensor::full([1], lowest, (kind, device)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn left_padded_positions_start_at_zero() {
        let mask = Tensor::from_slice2(&[[0i64, 0, 1, 1], [1, 1, 1, 1]]);
        let pos = positions_from_mask(&mask);
        let got: Vec<Vec<i64>> = Vec::try_from(pos).unwrap();
        assert_eq!(got, vec![vec![0, 0, 0, 1], vec![0, 1, 2, 3]]);
    }

    #[test]
    fn mask_blocks_future_and_padding() {
        let key_mask = Tensor::from_slice2(&[[0i64, 1, 1]]);
        let m = causal_padding_mask(&key_mask, 3, Kind::Float);
        let row = |q: i64| -> Vec<f32> { Vec::try_from(m.get(0).get(0).get(q)).unwrap() };
        assert!(row(2)[0] < -1e30 && row(2)[1] == 0.0 && row(2)[2] == 0.0);
        assert!(row(1)[0] < -1e30 && row(1)[1] == 0.0 && row(1)[2] < -1e30);
        // With a cache: one new query sees every non-pad key.
        let m = causal_padding_mask(&key_mask, 1, Kind::Float);
        let last: Vec<f32> = Vec::try_from(m.get(0).get(0).get(0)).unwrap();
        assert!(last[0] < -1e30 && last[1] == 0.0 && last[2] == 0.0);
    }
}
