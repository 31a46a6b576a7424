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
