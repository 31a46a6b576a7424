//! AdamW (Loshchilov & Hutter; the update of `torch.optim.AdamW`) with global-norm gradient
//! clipping that reports the norm it saw, and whose moments can be saved and restored.
//!
//! It is written here rather than wrapping libtorch's optimizer because tch does not expose that
//! optimizer's state: a PPO run that resumes from a checkpoint must continue with the same first
//! and second moments and step count, or its next update differs from the uninterrupted run.
//!
//! **Mixed precision.** A model held in bf16 is trained through fp32 *master* weights: the
//! optimizer keeps an fp32 copy of every bf16 variable and fp32 moments, applies the update to
//! the master, and writes the bf16 working copy (the master rounded to nearest) after each step.
//! Updating bf16 weights in place instead loses every update smaller than half a bf16 ulp of
//! the weight — at lr 1e-5 and weights around 1e-2, all of them — so the policy barely moves
//! ([`Precision::InPlace`] keeps that behaviour as a control). The master weights are saved
//! with the moments, so a resumed run continues exactly.

use std::path::Path;

use rrlhf_model::ModelError;
use rrlhf_model::tensor_files::{Dtype, MappedFile, SafeTensors, TensorView, host_tensor};
use tch::nn;
use tch::{Kind, Tensor};

use crate::error::{Result, TrainError};

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;
/// Name of the step counter inside a saved state file.
const STEP_KEY: &str = "step";
/// Prefix of the fp32 master weights inside a saved state file.
const MASTER_PREFIX: &str = "master.";

/// How the optimizer treats variables held in a lower precision than fp32 (bf16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// fp32 master weights and moments; the variable is the master rounded (the default).
    Master,
    /// Update the variable in its own dtype, moments too: loses small updates in bf16. Only a
    /// control for tests and benchmarks.
    InPlace,
}

/// AdamW over every trainable variable of a `VarStore`, in name order.
pub struct AdamW {
    vars: Vec<(String, Tensor)>,
    /// The fp32 master copy of each variable held in another dtype ([`Precision::Master`]).
    master: Vec<Option<Tensor>>,
    /// fp32 copies of the low-precision gradients, made by [`AdamW::gradients`] so that a
    /// data-parallel sum accumulates in fp32; [`AdamW::apply`] then reads them.
    grad32: Vec<Option<Tensor>>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    step: i64,
    weight_decay: f64,
}

impl std::fmt::Debug for AdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdamW")
            .field("vars", &self.vars.len())
            .field("step", &self.step)
            .finish()
    }
}

impl AdamW {
    /// Fresh moments for every trainable variable; the learning rate is given to each
    /// [`Self::step`].
    pub fn new(vs: &nn::VarStore, weight_decay: f64) -> Result<Self> {
        Self::with_precision(vs, weight_decay, Precision::Master)
    }

    /// [`Self::new`] with the given treatment of low-precision variables.
    pub fn with_precision(
        vs: &nn::VarStore,
        weight_decay: f64,
        precision: Precision,
    ) -> Result<Self> {
        let vars = trainable_by_name(vs);
        let _guard = tch::no_grad_guard();
        let master = vars
            .iter()
            .map(|(_, t)| match precision {
                Precision::Master if t.kind() != Kind::Float => {
                    Ok(Some(t.f_to_kind(Kind::Float)?.f_detach()?))
                }
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        // Moments live in the master's dtype: fp32 whenever there is a master.
        let zeros = || -> Result<Vec<Tensor>> {
            vars.iter()
                .zip(&master)
                .map(|((_, t), m)| Ok(m.as_ref().unwrap_or(t).f_zeros_like()?))
                .collect()
        };
        Ok(Self {
            exp_avg: zeros()?,
            exp_avg_sq: zeros()?,
            grad32: vars.iter().map(|_| None).collect(),
            master,
            vars,
            step: 0,
            weight_decay,
        })
    }

    /// The fp32 master copy of variable `name`, when it has one.
    pub fn master(&self, name: &str) -> Option<&Tensor> {
        let i = self.vars.iter().position(|(n, _)| n == name)?;
        self.master[i].as_ref()
    }

    /// Updates taken so far.
    pub fn steps(&self) -> i64 {
        self.step
    }

    /// Backpropagates `loss`, clips the global gradient norm to `max_norm` (if > 0), steps at
    /// `lr`, and returns the norm before clipping.
    pub fn step(&mut self, loss: &Tensor, lr: f64, max_norm: f64) -> Result<f64> {
        self.backward(loss, false)?;
        self.apply(lr, max_norm)
    }

    /// Zeroes the gradients and backpropagates `loss`. With `define_all`, a variable `loss`
    /// does not reach gets a zero gradient instead of none, so data-parallel ranks all hold the
    /// same list of gradients to reduce (a rank may have no samples in a mini-batch).
    pub fn backward(&mut self, loss: &Tensor, define_all: bool) -> Result<()> {
        self.zero_grad()?;
        self.accumulate(loss)?;
        if define_all {
            self.define_missing_gradients()?;
        }
        Ok(())
    }

    /// Zeroes every gradient (and forgets fp32 copies of them).
    pub fn zero_grad(&mut self) -> Result<()> {
        self.grad32.iter_mut().for_each(|g| *g = None);
        for (_, v) in &self.vars {
            let mut g = v.grad();
            if g.defined() {
                let _ = g.f_zero_()?;
            }
        }
        Ok(())
    }

    /// Backpropagates `loss`, adding to the gradients already there (gradient accumulation).
    pub fn accumulate(&mut self, loss: &Tensor) -> Result<()> {
        Ok(loss.f_backward()?)
    }

    /// Gives every variable no loss reached a zero gradient.
    pub fn define_missing_gradients(&mut self) -> Result<()> {
        let missing: Vec<&Tensor> = self
            .vars
            .iter()
            .map(|(_, v)| v)
            .filter(|v| !v.grad().defined())
            .collect();
        if let Some(first) = missing.first() {
            let mut zero = first.f_sum(Kind::Float)?.f_mul_scalar(0.0)?;
            for v in &missing[1..] {
                zero = zero.f_add(&v.f_sum(Kind::Float)?.f_mul_scalar(0.0)?)?;
            }
            zero.f_backward()?;
        }
        Ok(())
    }

    /// Multiplies the gradients [`Self::apply`] will read by `factor`, e.g. to turn a sum of
    /// token losses into their mean: the fp32 copies where a data-parallel reduction made them,
    /// else the gradients in place. Scaling a bf16 gradient in bf16 costs one rounding (relative
    /// 2⁻⁹, what the gradient already carries) and saves an fp32 copy of every gradient — 4
    /// bytes per parameter, 32 GB for an 8B model (`bench/README.md`, memory).
    pub fn scale_gradients(&mut self, factor: f64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        for i in 0..self.vars.len() {
            let mut g = self.gradient(i);
            if g.defined() {
                let _ = g.f_mul_scalar_(factor)?;
            }
        }
        Ok(())
    }

    /// The variables' current gradients, in fp32 wherever there is a master (shallow handles:
    /// reducing them in place changes what [`Self::apply`] uses); undefined ones are skipped.
    pub fn gradients(&mut self) -> Result<Vec<Tensor>> {
        let mut out = Vec::with_capacity(self.vars.len());
        for (i, (_, v)) in self.vars.iter().enumerate() {
            let g = v.grad();
            if !g.defined() {
                continue;
            }
            if self.master[i].is_some() {
                let g32 = match &self.grad32[i] {
                    Some(g32) => g32.shallow_clone(),
                    None => g.f_to_kind(Kind::Float)?,
                };
                self.grad32[i] = Some(g32.shallow_clone());
                out.push(g32);
            } else {
                out.push(g);
            }
        }
        Ok(out)
    }

    /// Variable `i`'s gradient as the update reads it: its fp32 copy when one was made.
    fn gradient(&self, i: usize) -> Tensor {
        match &self.grad32[i] {
            Some(g32) => g32.shallow_clone(),
            None => self.vars[i].1.grad(),
        }
    }

    /// The optimized variables, in the optimizer's (name) order.
    pub fn variables(&self) -> Vec<Tensor> {
        self.vars.iter().map(|(_, v)| v.shallow_clone()).collect()
    }

    /// Moments (first then second, in variable order) and master weights: with the step
    /// count, the state ranks must share.
    pub fn moments(&self) -> Vec<Tensor> {
        self.exp_avg
            .iter()
            .chain(&self.exp_avg_sq)
            .chain(self.master.iter().flatten())
            .map(Tensor::shallow_clone)
            .collect()
    }

    /// Bytes the optimizer holds besides the variables and their gradients: moments, fp32
    /// masters, and the fp32 gradient copies a data-parallel reduction made (kept until the
    /// next update zeroes the gradients).
    pub fn held_bytes(&self) -> i64 {
        self.moments()
            .iter()
            .chain(self.grad32.iter().flatten())
            .map(|t| (t.numel() * t.kind().elt_size_in_bytes()) as i64)
            .sum()
    }

    pub fn set_steps(&mut self, steps: i64) {
        self.step = steps;
    }

    /// Clips the gradients [`Self::backward`] left to `max_norm` (if > 0), steps at `lr`, and
    /// returns the norm before clipping.
    pub fn apply(&mut self, lr: f64, max_norm: f64) -> Result<f64> {
        let norm = self.grad_norm()?;
        let clip = clip_factor(norm, max_norm);
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let step = AdamStep::new(self.step, lr, self.weight_decay, clip);
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let g = self.gradient(i);
            if !g.defined() {
                continue;
            }
            // The update happens on the master (fp32) when there is one, else on the variable.
            let p = self.master[i].as_ref().unwrap_or(var);
            step.apply(p, &g, &mut self.exp_avg[i], &mut self.exp_avg_sq[i])?;
            if self.master[i].is_some() {
                // The working copy: the master rounded to the variable's dtype.
                var.shallow_clone().f_copy_(p)?;
            }
        }
        Ok(norm)
    }

    fn grad_norm(&self) -> Result<f64> {
        let mut total = 0.0;
        for i in 0..self.vars.len() {
            let g = self.gradient(i);
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

    /// Writes the moments, master weights and step count to `path` (safetensors, one file),
    /// streamed one tensor at a time.
    pub fn save_state(&self, path: &Path) -> Result<()> {
        let mut named = vec![step_tensor(self.step)];
        for (i, (name, _)) in self.vars.iter().enumerate() {
            let [m, v, master] = state_keys(name);
            named.push((m, self.exp_avg[i].shallow_clone()));
            named.push((v, self.exp_avg_sq[i].shallow_clone()));
            if let Some(t) = &self.master[i] {
                named.push((master, t.shallow_clone()));
            }
        }
        rrlhf_model::tensor_files::write_file(path, named)?;
        Ok(())
    }

    /// Restores a state written by [`Self::save_state`] for the same variables; checks every
    /// tensor's presence and shape before changing anything, then copies the memory-mapped
    /// tensors in one at a time.
    pub fn load_state(&mut self, path: &Path) -> Result<()> {
        let file = MappedFile::open(path)?;
        let saved = file.tensors()?;
        let (step, views) = saved_views(&saved, path, &self.vars)?;
        let _guard = tch::no_grad_guard();
        let load = |(key, view): &(String, TensorView<'_>), into: &mut Tensor| -> Result<()> {
            into.f_copy_(&host_tensor(view, path, key)?)?;
            Ok(())
        };
        for (i, var) in views.iter().enumerate() {
            load(&var.exp_avg, &mut self.exp_avg[i])?;
            load(&var.exp_avg_sq, &mut self.exp_avg_sq[i])?;
            if let (Some(mine), Some(saved)) = (&mut self.master[i], &var.master) {
                load(saved, mine)?;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// The factor that brings a gradient of global norm `norm` within `max_norm` (no clipping when
/// `max_norm` ≤ 0): `torch.nn.utils.clip_grad_norm_`'s.
pub(crate) fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}

/// One AdamW update (`torch.optim.AdamW`'s arithmetic) at a given step, applied tensor by
/// tensor: the replicated optimizer calls it per variable, the sharded one on its flat shard.
pub(crate) struct AdamStep {
    lr: f64,
    weight_decay: f64,
    clip: f64,
    bias1: f64,
    bias2_sqrt: f64,
}

impl AdamStep {
    /// The update of step `step` (counted from 1) at `lr`, gradients scaled by `clip`.
    pub(crate) fn new(step: i64, lr: f64, weight_decay: f64, clip: f64) -> Self {
        Self {
            lr,
            weight_decay,
            clip,
            bias1: 1.0 - BETA1.powi(step as i32),
            bias2_sqrt: (1.0 - BETA2.powi(step as i32)).sqrt(),
        }
    }

    /// Updates `p` (in place) and its moments `m`, `v` from gradient `g` (any float dtype; read
    /// only). Call under `no_grad`.
    pub(crate) fn apply(
        &self,
        p: &Tensor,
        g: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
    ) -> Result<()> {
        let mut p = p.shallow_clone();
        // An fp32 view of the gradient (a copy only for bf16; never written to).
        let mut g = g.f_to_kind(p.kind())?;
        if self.clip != 1.0 {
            g = g.f_mul_scalar(self.clip)?;
        }
        let _ = p.f_mul_scalar_(1.0 - self.lr * self.weight_decay)?;
        // One scratch tensor `t` for every intermediate, in place: besides the gradient's fp32
        // copy, an update holds one extra tensor the size of the largest parameter (the
        // vocabulary matrices), not five.
        let mut t = g.f_mul_scalar(1.0 - BETA1)?;
        let _ = m.f_mul_scalar_(BETA1)?.f_add_(&t)?;
        t.f_copy_(&g)?;
        let _ = t.f_mul_(&g)?.f_mul_scalar_(1.0 - BETA2)?;
        let _ = v.f_mul_scalar_(BETA2)?.f_add_(&t)?;
        t.f_copy_(v)?;
        let _ = t
            .f_sqrt_()?
            .f_div_scalar_(self.bias2_sqrt)?
            .f_add_scalar_(EPS)?;
        // t ← m / t, then the step size.
        let _ = m.f_div_out(&t, &t)?;
        let _ = t.f_mul_scalar_(self.lr / self.bias1)?;
        let _ = p.f_sub_(&t)?;
        Ok(())
    }
}

/// The names a saved state gives the step count and one variable's first moment, second moment
/// and fp32 master (written only for variables held in another dtype): one format for the
/// replicated and the sharded optimizer, so a state loads at any world size.
pub(crate) fn state_keys(name: &str) -> [String; 3] {
    [
        format!("exp_avg.{name}"),
        format!("exp_avg_sq.{name}"),
        format!("{MASTER_PREFIX}{name}"),
    ]
}

/// The saved step-count tensor of a state file.
pub(crate) fn step_tensor(step: i64) -> (String, Tensor) {
    (STEP_KEY.to_owned(), Tensor::from_slice(&[step]))
}

/// One variable's tensors in a saved state, each with its key.
pub(crate) struct SavedVar<'a> {
    pub exp_avg: (String, TensorView<'a>),
    pub exp_avg_sq: (String, TensorView<'a>),
    /// Absent from a state saved without masters (an fp32 run): the masters are then taken
    /// from the loaded weights.
    pub master: Option<(String, TensorView<'a>)>,
}

/// The step count and each of `vars`' tensors in the state file `saved` (read from `path`),
/// after checking that every tensor is there with the variable's shape.
pub(crate) fn saved_views<'a>(
    saved: &'a SafeTensors<'a>,
    path: &Path,
    vars: &[(String, Tensor)],
) -> Result<(i64, Vec<SavedVar<'a>>)> {
    let bad = |message: String| TrainError::Invalid(format!("{}: {message}", path.display()));
    let get = |key: String, like: &Tensor| -> Result<(String, TensorView<'a>)> {
        let view = saved
            .tensor(&key)
            .map_err(|_| bad(format!("optimizer state has no tensor `{key}`")))?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        if shape != like.size() {
            return Err(bad(format!(
                "`{key}` has shape {shape:?}, the model needs {:?}",
                like.size()
            )));
        }
        if !matches!(
            view.dtype(),
            Dtype::F32 | Dtype::BF16 | Dtype::F16 | Dtype::F64
        ) {
            return Err(bad(format!(
                "`{key}` has dtype {:?}, not a floating-point one",
                view.dtype()
            )));
        }
        Ok((key, view))
    };
    let step_view = saved
        .tensor(STEP_KEY)
        .map_err(|_| bad(format!("optimizer state has no `{STEP_KEY}`")))?;
    let step = host_tensor(&step_view, path, STEP_KEY)?.f_int64_value(&[0])?;
    let mut out = Vec::with_capacity(vars.len());
    for (name, p) in vars {
        let [m, v, master] = state_keys(name);
        out.push(SavedVar {
            exp_avg: get(m, p)?,
            exp_avg_sq: get(v, p)?,
            master: match saved.tensor(&master) {
                Ok(_) => Some(get(master, p)?),
                Err(_) => None,
            },
        });
    }
    Ok((step, out))
}

/// Every trainable variable of `vs`, sorted by name (the order ranks and saved states share).
pub fn trainable_by_name(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// File name of the optimizer state inside a service checkpoint directory (beside the HF
/// `model.safetensors`, which loaders never confuse it with).
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Writes the optimizer state, when there is one, into checkpoint directory `dir`.
pub fn save_into_checkpoint(opt: Option<&AdamW>, dir: &Path) -> Result<(), ModelError> {
    opt.map_or(Ok(()), |o| o.save_state(&dir.join(OPTIMIZER_FILE)))
        .map_err(|e| checkpoint_error(dir, e))
}

/// After a checkpoint's weights were loaded from `dir`: restores the optimizer state saved with
/// them, or forgets the current moments when the checkpoint has none (they belonged to other
/// weights).
pub fn restore_from_checkpoint(
    slot: &mut Option<AdamW>,
    vs: &nn::VarStore,
    weight_decay: f64,
    dir: &Path,
) -> Result<(), ModelError> {
    let path = dir.join(OPTIMIZER_FILE);
    if !path.exists() {
        *slot = None;
        return Ok(());
    }
    let mut opt = AdamW::new(vs, weight_decay).map_err(|e| checkpoint_error(dir, e))?;
    opt.load_state(&path)
        .map_err(|e| checkpoint_error(dir, e))?;
    *slot = Some(opt);
    Ok(())
}

/// An optimizer-state failure while saving or loading the checkpoint at `dir`, as the model
/// error the services already map to gRPC statuses.
pub(crate) fn checkpoint_error(dir: &Path, e: TrainError) -> ModelError {
    ModelError::Checkpoint {
        path: dir.to_path_buf(),
        message: format!("optimizer state: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, nn::Module};

    /// A linear layer with weights fixed by `seed` (not libtorch's global RNG, which parallel
    /// tests share).
    fn model(seed: i64) -> (nn::VarStore, nn::Linear) {
        let vs = nn::VarStore::new(Device::Cpu);
        let lin = nn::linear(vs.root() / "lin", 3, 2, Default::default());
        let values: Vec<f32> = (0..8)
            .map(|i| ((i * 7 + seed * 3) % 11) as f32 / 5.0 - 1.0)
            .collect();
        tch::no_grad(|| {
            lin.ws
                .shallow_clone()
                .copy_(&Tensor::from_slice(&values[..6]).view([2, 3]));
            lin.bs
                .as_ref()
                .unwrap()
                .shallow_clone()
                .copy_(&Tensor::from_slice(&values[6..]));
        });
        (vs, lin)
    }

    fn loss(lin: &nn::Linear) -> Tensor {
        let x = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 1.0, 0.0, -0.5]).view([2, 3]);
        lin.forward(&x).square().sum(Kind::Float)
    }

    #[test]
    fn matches_torch_adamw_and_reduces_the_loss() {
        let (vs_a, a) = model(0);
        let (vs_b, b) = model(0);
        let mut ours = AdamW::new(&vs_a, 0.01).unwrap();
        let mut torch = nn::OptimizerConfig::build(
            nn::AdamW {
                wd: 0.01,
                ..Default::default()
            },
            &vs_b,
            0.01,
        )
        .unwrap();
        let first = loss(&a).double_value(&[]);
        for _ in 0..20 {
            ours.step(&loss(&a), 0.01, 0.0).unwrap();
            torch.backward_step(&loss(&b));
        }
        let diff = (&a.ws - &b.ws).abs().max().double_value(&[]);
        assert!(
            diff < 1e-5,
            "weights differ from torch.optim.AdamW by {diff}"
        );
        assert!(loss(&a).double_value(&[]) < first);
    }

    #[test]
    fn saved_state_continues_identically() {
        let dir = tempfile::tempdir().unwrap();
        let (vs_a, a) = model(1);
        let mut opt_a = AdamW::new(&vs_a, 0.0).unwrap();
        for _ in 0..3 {
            opt_a.step(&loss(&a), 0.01, 1.0).unwrap();
        }
        let path = dir.path().join("optimizer.safetensors");
        opt_a.save_state(&path).unwrap();
        // A second model with the same weights and the restored state takes the same next step.
        let (vs_b, b) = model(2);
        tch::no_grad(|| {
            b.ws.shallow_clone().copy_(&a.ws);
            b.bs.as_ref()
                .unwrap()
                .shallow_clone()
                .copy_(a.bs.as_ref().unwrap());
        });
        let mut opt_b = AdamW::new(&vs_b, 0.0).unwrap();
        opt_b.load_state(&path).unwrap();
        assert_eq!(opt_b.steps(), 3);
        opt_a.step(&loss(&a), 0.01, 1.0).unwrap();
        opt_b.step(&loss(&b), 0.01, 1.0).unwrap();
        assert_eq!((&a.ws - &b.ws).abs().max().double_value(&[]), 0.0);
    }

    #[test]
    fn a_state_for_other_variables_is_rejected_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (vs, _) = model(0);
        let opt = AdamW::new(&vs, 0.0).unwrap();
        let path = dir.path().join("o.safetensors");
        opt.save_state(&path).unwrap();
        let other = nn::VarStore::new(Device::Cpu);
        let _ = nn::linear(other.root() / "other", 3, 2, Default::default());
        let err = AdamW::new(&other, 0.0)
            .unwrap()
            .load_state(&path)
            .unwrap_err();
        assert!(err.to_string().contains("exp_avg.other"), "{err}");
    }

    /// One variable `w` of 64 weights around 1e-2 (bf16-representable, so every precision
    /// starts from the same values), held in `kind`.
    fn small_weights(kind: Kind) -> (nn::VarStore, Tensor) {
        let init = Tensor::linspace(0.01, 0.02, 64, (Kind::Float, Device::Cpu))
            .to_kind(Kind::BFloat16)
            .to_kind(Kind::Float);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let _ = vs.root().var_copy("w", &init);
        vs.set_kind(kind);
        let w = vs.variables()["w"].shallow_clone();
        (vs, w)
    }

    /// A loss whose gradient with respect to `w` is the fixed tensor of step `t` (rounded to
    /// bf16, so every precision is fed the same values).
    fn fed(w: &Tensor, t: i64) -> Tensor {
        let g = (Tensor::arange(64, (Kind::Float, Device::Cpu)) * 0.37 + t as f64)
            .sin()
            .to_kind(Kind::BFloat16)
            .to_kind(Kind::Float);
        (w.to_kind(Kind::Float) * g).sum(Kind::Float)
    }

    #[test]
    fn bf16_with_fp32_master_follows_fp32_adamw_and_in_place_bf16_falls_short() {
        let (vs32, w32) = small_weights(Kind::Float);
        let (vs16, w16) = small_weights(Kind::BFloat16);
        let (vs_in_place, w_in_place) = small_weights(Kind::BFloat16);
        let start = w32.copy();
        let mut reference = AdamW::new(&vs32, 0.0).unwrap();
        let mut mixed = AdamW::new(&vs16, 0.0).unwrap();
        let mut in_place = AdamW::with_precision(&vs_in_place, 0.0, Precision::InPlace).unwrap();
        for t in 0..50 {
            reference.step(&fed(&w32, t), 1e-5, 0.0).unwrap();
            mixed.step(&fed(&w16, t), 1e-5, 0.0).unwrap();
            in_place.step(&fed(&w_in_place, t), 1e-5, 0.0).unwrap();
        }
        let master = mixed
            .master("w")
            .expect("a bf16 variable has an fp32 master");
        let rel = |a: &Tensor, b: &Tensor| ((a - b).abs() / b.abs()).max().double_value(&[]);
        assert!(
            rel(master, &w32) <= 1e-6,
            "master vs fp32 AdamW: {}",
            rel(master, &w32)
        );
        assert!(
            w16.equal(&master.to_kind(Kind::BFloat16)),
            "the working copy is the master rounded"
        );
        // Each update (≤ 1e-5) is below half a bf16 ulp of a weight near 1e-2 (≈ 3e-5): the
        // in-place bf16 update rounds them all away.
        let moved = |w: &Tensor| {
            (w.to_kind(Kind::Float) - &start)
                .abs()
                .sum(Kind::Float)
                .double_value(&[])
        };
        assert!(moved(&w32) > 0.0);
        assert!(
            moved(&w_in_place) < 0.1 * moved(&w32),
            "in-place bf16 moved {} where fp32 moved {}",
            moved(&w_in_place),
            moved(&w32)
        );
        assert!(
            moved(&w16) > 0.5 * moved(&w32),
            "the bf16 working copy follows the master"
        );
    }

    #[test]
    fn fp32_master_weights_survive_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optimizer.safetensors");
        let (vs_a, a) = small_weights(Kind::BFloat16);
        let mut opt_a = AdamW::new(&vs_a, 0.0).unwrap();
        for t in 0..5 {
            opt_a.step(&fed(&a, t), 1e-3, 0.0).unwrap();
        }
        opt_a.save_state(&path).unwrap();
        // The same bf16 weights, but a master taken from them would have lost the fp32 digits.
        let (vs_b, b) = small_weights(Kind::BFloat16);
        tch::no_grad(|| b.shallow_clone().copy_(&a));
        let mut opt_b = AdamW::new(&vs_b, 0.0).unwrap();
        opt_b.load_state(&path).unwrap();
        assert!(opt_b.master("w").unwrap().equal(opt_a.master("w").unwrap()));
        opt_a.step(&fed(&a, 5), 1e-3, 0.0).unwrap();
        opt_b.step(&fed(&b, 5), 1e-3, 0.0).unwrap();
        assert!(opt_b.master("w").unwrap().equal(opt_a.master("w").unwrap()));
        assert!(a.equal(&b), "bit-identical continuation");
    }
}
