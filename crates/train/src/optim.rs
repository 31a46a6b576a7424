//! AdamW with global-norm gradient clipping that reports the norm it saw.

use tch::nn::{self, OptimizerConfig};
use tch::{Kind, Tensor};

use crate::error::Result;

/// AdamW over every trainable variable of a `VarStore`.
pub struct AdamW {
    opt: nn::Optimizer,
    vars: Vec<Tensor>,
}

impl std::fmt::Debug for AdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdamW")
            .field("vars", &self.vars.len())
            .finish()
    }
}

impl AdamW {
    pub fn new(vs: &nn::VarStore, lr: f64, weight_decay: f64) -> Result<Self> {
        let cfg = nn::AdamW {
            wd: weight_decay,
            ..Default::default()
        };
        Ok(Self {
            opt: cfg.build(vs, lr)?,
            vars: vs.trainable_variables(),
        })
    }

    /// Backpropagates `loss`, clips the global gradient norm to `max_norm` (if > 0), steps at
    /// `lr`, and returns the norm before clipping.
    pub fn step(&mut self, loss: &Tensor, lr: f64, max_norm: f64) -> Result<f64> {
        self.opt.zero_grad();
        loss.f_backward()?;
        let norm = self.grad_norm()?;
        if max_norm > 0.0 && norm > max_norm {
            let scale = max_norm / (norm + 1e-6);
            let _guard = tch::no_grad_guard();
            for v in &self.vars {
                let mut g = v.grad();
                if g.defined() {
                    let _ = g.f_mul_scalar_(scale)?;
                }
            }
        }
        self.opt.set_lr(lr);
        self.opt.step();
        Ok(norm)
    }

    fn grad_norm(&self) -> Result<f64> {
        let mut total = 0.0;
        for v in &self.vars {
            let g = v.grad();
            if g.defined() {
                total += g
                    .f_to_kind(Kind::Float)?
                    .f_square()?
                    .f_sum(Kind::Float)?
                    .double_value(&[]);
            }
        }
        Ok(total.sqrt())
    }
}
