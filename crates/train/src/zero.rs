//! ZeRO stages 1 and 2 (Rajbhandari et al. 2020): AdamW whose fp32 master weights and moments
//! are split over the data-parallel ranks instead of replicated on each.
//!
//! **Layout.** The trainable variables, in name order, are laid end to end as one flat range
//! of elements, cut into buckets of [`DEFAULT_BUCKET_ELEMENTS`] (a variable may straddle
//! buckets). Each bucket is padded to a multiple of the world size N and split into N equal
//! chunks; rank r owns chunk r of every bucket. So every rank owns ⌈len/N⌉ elements of each
//! bucket — about 1/N of the model, however uneven the variables — and one transfer moves one
//! bucket, so no collective needs scratch beyond one bucket (64 MiB in fp32).
//!
//! **An update.** After this rank's backward (micro-batches accumulated), each bucket's
//! gradients are packed into an fp32 buffer and reduce-scattered: this rank receives the sum
//! over ranks of its own chunk. Stage 2 releases a variable's gradient as soon as its last
//! element is packed, so gradients do not stay allocated between updates or during the
//! optimizer step and rollouts (stage 1 keeps them, zeroed, as the replicated optimizer does).
//! The squared norms of the shards are summed over the ranks for clipping, then AdamW
//! ([`crate::optim::AdamStep`], the replicated optimizer's arithmetic) updates the fp32 shard,
//! and the shards are all-gathered bucket by bucket into the working weights (rounded to their
//! dtype, e.g. bf16). Every rank thus ends with the weights the replicated optimizer would
//! compute; only the norm's summation order differs.
//!
//! **What it does not do (yet).** Gradients are reduced after backward, not inside it, so a
//! rank still holds one full gradient at the end of each backward; reducing bucket by bucket
//! from backward hooks (DeepSpeed's overlap) would remove that peak too.
//!
//! **Checkpoints** are gathered to rank 0 in the replicated optimizer's format
//! (`optimizer.safetensors`, [`crate::optim::AdamW::save_state`]), on the host, one bucket at a
//! time; loading scatters such a file from rank 0 one bucket at a time. A state therefore
//! loads at any world size and stage, replicated or sharded.

use std::path::Path;

use rrlhf_model::grad::release_grad;
use rrlhf_model::tensor_files::{MappedFile, TensorView, host_slice};
use tch::{Device, Kind, Tensor, nn};

use crate::data_parallel::{DataParallel, Optimizer};
use crate::error::{Result, TrainError};
use crate::optim::{self, AdamStep, SavedVar};

/// Elements per bucket: 16 Mi, 64 MiB of fp32 scratch per transfer (DeepSpeed's default
/// reduce bucket is 5·10⁸ elements; smaller buckets cost little on NVLink and keep scratch
/// small beside an 8B model).
pub const DEFAULT_BUCKET_ELEMENTS: i64 = 16 << 20;

/// How much of the optimizer a data-parallel group shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroStage {
    /// Every rank holds the whole AdamW state (stage 0).
    Off,
    /// fp32 master weights and moments sharded (stage 1).
    OptimizerState,
    /// Stage 1, and gradients released once reduced into their owner's shard (stage 2).
    Gradients,
}

impl ZeroStage {
    /// The stage of `server.zero_stage` (0, 1 or 2).
    pub fn from_level(level: u32) -> Result<Self> {
        match level {
            0 => Ok(Self::Off),
            1 => Ok(Self::OptimizerState),
            2 => Ok(Self::Gradients),
            other => Err(TrainError::Invalid(format!(
                "zero_stage must be 0, 1 or 2, got {other}"
            ))),
        }
    }

    pub fn level(self) -> u32 {
        match self {
            Self::Off => 0,
            Self::OptimizerState => 1,
            Self::Gradients => 2,
        }
    }
}

/// Part of one variable inside one bucket.
#[derive(Debug, Clone, Copy)]
struct Segment {
    var: usize,
    /// First element of the part in the flattened variable.
    var_start: i64,
    /// First element of the part in the bucket.
    bucket_start: i64,
    len: i64,
}

#[derive(Debug, Clone)]
struct Bucket {
    segments: Vec<Segment>,
    /// Elements per rank (the bucket padded to a multiple of the world size, divided by it).
    chunk: i64,
    /// Where this bucket's chunk starts in a rank's shard.
    shard_start: i64,
    /// Variables whose last element lies in this bucket.
    completes: Vec<usize>,
}

/// Which elements of which variables each rank owns.
#[derive(Debug, Clone)]
struct Layout {
    buckets: Vec<Bucket>,
    /// Elements this rank owns (padding included): the length of every shard tensor.
    shard_len: i64,
    rank: i64,
    world: i64,
}

impl Layout {
    fn new(sizes: &[i64], bucket_elements: i64, rank: usize, world: usize) -> Self {
        let world = world.max(1) as i64;
        let mut buckets = Vec::new();
        let mut current: Vec<Segment> = Vec::new();
        let mut filled = 0;
        let mut shard_len = 0;
        let mut close = |segments: Vec<Segment>, filled: i64, shard_len: &mut i64| {
            let chunk = (filled + world - 1) / world;
            let completes = segments
                .iter()
                .filter(|s| s.var_start + s.len == sizes[s.var])
                .map(|s| s.var)
                .collect();
            buckets.push(Bucket {
                segments,
                chunk,
                shard_start: *shard_len,
                completes,
            });
            *shard_len += chunk;
        };
        for (var, &size) in sizes.iter().enumerate() {
            let mut start = 0;
            while start < size {
                let len = (size - start).min(bucket_elements - filled);
                current.push(Segment {
                    var,
                    var_start: start,
                    bucket_start: filled,
                    len,
                });
                start += len;
                filled += len;
                if filled == bucket_elements {
                    close(std::mem::take(&mut current), filled, &mut shard_len);
                    filled = 0;
                }
            }
        }
        if filled > 0 {
            close(current, filled, &mut shard_len);
        }
        Self {
            buckets,
            shard_len,
            rank: rank as i64,
            world,
        }
    }

    /// This rank's chunk of a full (padded) bucket buffer.
    fn own(&self, bucket: &Bucket, full: &Tensor) -> Result<Tensor> {
        Ok(full.f_narrow(0, self.rank * bucket.chunk, bucket.chunk)?)
    }
}

/// AdamW with its state sharded over a data-parallel group (see the module).
pub struct ShardedAdamW {
    vars: Vec<(String, Tensor)>,
    layout: Layout,
    stage: ZeroStage,
    /// This rank's elements of the fp32 weights, moments and reduced gradient.
    master: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    grad: Tensor,
    step: i64,
    weight_decay: f64,
}

impl std::fmt::Debug for ShardedAdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedAdamW")
            .field("vars", &self.vars.len())
            .field("stage", &self.stage)
            .field("shard_len", &self.layout.shard_len)
            .field("step", &self.step)
            .finish()
    }
}

impl ShardedAdamW {
    /// Fresh moments for this rank's part of every trainable variable of `vs`, its master
    /// weights taken from `vs` (equal on every rank). No collective: a rank that fails here
    /// can still say so in the group's next agreement.
    pub fn new(vs: &nn::VarStore, weight_decay: f64, dp: &DataParallel) -> Result<Self> {
        let vars = optim::trainable_by_name(vs);
        let device = vars
            .first()
            .map(|(_, t)| t.device())
            .ok_or_else(|| TrainError::Invalid("the model has no trainable weights".into()))?;
        let sizes: Vec<i64> = vars.iter().map(|(_, t)| t.numel() as i64).collect();
        let layout = Layout::new(&sizes, dp.bucket_elements(), dp.rank(), dp.world_size());
        let zeros = || Tensor::f_zeros([layout.shard_len], (Kind::Float, device));
        // A group set to stage 0 that builds one anyway (a direct caller) gets stage 1.
        let stage = match dp.zero() {
            ZeroStage::Off => ZeroStage::OptimizerState,
            other => other,
        };
        let opt = Self {
            master: zeros()?,
            exp_avg: zeros()?,
            exp_avg_sq: zeros()?,
            grad: zeros()?,
            vars,
            layout,
            stage,
            step: 0,
            weight_decay,
        };
        let _guard = tch::no_grad_guard();
        for bucket in &opt.layout.buckets {
            let full = opt.pack(bucket, |v| Some(opt.vars[v].1.shallow_clone()))?;
            opt.shard_of(&opt.master, bucket)?
                .f_copy_(&opt.layout.own(bucket, &full)?)?;
        }
        Ok(opt)
    }

    /// Updates taken so far.
    pub fn steps(&self) -> i64 {
        self.step
    }

    /// Elements of each state tensor (fp32 weights, first and second moment, gradient) this
    /// rank holds: ⌈1/N⌉ of the model per bucket.
    pub fn shard_len(&self) -> i64 {
        self.layout.shard_len
    }

    /// Bytes the optimizer holds on this rank: its shards of the fp32 master weights, both
    /// moments and the reduced gradient.
    pub fn held_bytes(&self) -> i64 {
        4 * 4 * self.layout.shard_len
    }

    fn device(&self) -> Device {
        self.master.device()
    }

    /// Bucket `bucket`'s chunk of the shard tensor `shard`.
    fn shard_of(&self, shard: &Tensor, bucket: &Bucket) -> Result<Tensor> {
        Ok(shard.f_narrow(0, bucket.shard_start, bucket.chunk)?)
    }

    /// A zeroed fp32 buffer of one full (padded) bucket.
    fn bucket_buffer(&self, bucket: &Bucket) -> Result<Tensor> {
        Ok(Tensor::f_zeros(
            [bucket.chunk * self.layout.world],
            (Kind::Float, self.device()),
        )?)
    }

    /// The full bucket of the tensors `source` gives per variable (none: zeros), in fp32.
    fn pack(&self, bucket: &Bucket, source: impl Fn(usize) -> Option<Tensor>) -> Result<Tensor> {
        let full = self.bucket_buffer(bucket)?;
        for s in &bucket.segments {
            if let Some(t) = source(s.var).filter(Tensor::defined) {
                full.f_narrow(0, s.bucket_start, s.len)?
                    .f_copy_(&t.f_reshape([-1])?.f_narrow(0, s.var_start, s.len)?)?;
            }
        }
        Ok(full)
    }

    /// Zeroes the gradients (stage 1) or releases them (stage 2).
    fn release_or_zero_grads(&mut self) -> Result<()> {
        for (_, v) in &self.vars {
            match self.stage {
                ZeroStage::Gradients => release_grad(v),
                _ => {
                    let mut g = v.grad();
                    if g.defined() {
                        let _ = g.f_zero_()?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Ends an update whose token-summed gradients this rank holds: reduce-scatters them into
    /// the shard, divides by `tokens` (every rank's), clips the global norm to `max_norm`
    /// (when positive), steps the shard at `lr` and all-gathers the new weights. Returns the
    /// norm before clipping. Every rank of `dp` must call it for the same update.
    fn sharded_update(
        &mut self,
        dp: &DataParallel,
        tokens: f64,
        lr: f64,
        max_norm: f64,
    ) -> Result<f64> {
        let _guard = tch::no_grad_guard();
        for bucket in &self.layout.buckets {
            let full = self.pack(bucket, |v| Some(self.vars[v].1.grad()))?;
            if self.stage == ZeroStage::Gradients {
                for &v in &bucket.completes {
                    release_grad(&self.vars[v].1);
                }
            }
            dp.reduce_scatter(&full, &self.shard_of(&self.grad, bucket)?)?;
        }
        let _ = self
            .grad
            .f_mul_scalar_(if tokens > 0.0 { 1.0 / tokens } else { 0.0 })?;
        let mut local = 0.0;
        for bucket in &self.layout.buckets {
            let g = self.shard_of(&self.grad, bucket)?;
            local += g.f_square()?.f_sum(Kind::Double)?.f_double_value(&[])?;
        }
        let norm = dp.sum(&[local])?[0].sqrt();
        self.step += 1;
        let step = AdamStep::new(
            self.step,
            lr,
            self.weight_decay,
            optim::clip_factor(norm, max_norm),
        );
        // Bucket by bucket, so the update's scratch tensors are one chunk, not the shard.
        for bucket in &self.layout.buckets {
            let chunk = |t: &Tensor| self.shard_of(t, bucket);
            let (mut m, mut v) = (chunk(&self.exp_avg)?, chunk(&self.exp_avg_sq)?);
            step.apply(&chunk(&self.master)?, &chunk(&self.grad)?, &mut m, &mut v)?;
        }
        self.gather_weights(dp)?;
        Ok(norm)
    }

    /// All-gathers the master shards into the working weights, bucket by bucket.
    fn gather_weights(&self, dp: &DataParallel) -> Result<()> {
        for bucket in &self.layout.buckets {
            self.gather_bucket(dp, &self.master, bucket, |v| {
                Some(self.vars[v].1.shallow_clone())
            })?;
        }
        Ok(())
    }

    /// All-gathers `bucket` of the shard tensor `shard` and copies each variable's part into
    /// `dest(var)` (a tensor shaped like the variable; skipped where `None`): the inverse of
    /// [`Self::pack`].
    fn gather_bucket(
        &self,
        dp: &DataParallel,
        shard: &Tensor,
        bucket: &Bucket,
        dest: impl Fn(usize) -> Option<Tensor>,
    ) -> Result<()> {
        let full = self.bucket_buffer(bucket)?;
        dp.all_gather(&self.shard_of(shard, bucket)?, &full)?;
        for s in &bucket.segments {
            if let Some(into) = dest(s.var) {
                into.f_view([-1])?
                    .f_narrow(0, s.var_start, s.len)?
                    .f_copy_(&full.f_narrow(0, s.bucket_start, s.len)?)?;
            }
        }
        Ok(())
    }

    /// Gathers the whole state to rank 0, bucket by bucket, as the named tensors of the
    /// replicated optimizer's file ([`crate::optim::AdamW::save_state`]); `None` on the other
    /// ranks, which only send their shards. Every rank must call it. Rank 0 holds the state in
    /// host memory (12 bytes per parameter for bf16 weights, 8 for fp32) until it is written.
    pub fn gather_state(&self, dp: &DataParallel) -> Result<Option<Vec<(String, Tensor)>>> {
        let _guard = tch::no_grad_guard();
        let root = dp.rank() == 0;
        // On rank 0, per variable: first moment, second moment, master (only for variables
        // not held in fp32).
        let host = |v: &Tensor| Tensor::f_zeros(v.size(), (Kind::Float, Device::Cpu));
        let mut full_state: Vec<[Option<Tensor>; 3]> = Vec::new();
        for (_, v) in self.vars.iter().filter(|_| root) {
            let master = (v.kind() != Kind::Float).then(|| host(v)).transpose()?;
            full_state.push([Some(host(v)?), Some(host(v)?), master]);
        }
        for bucket in &self.layout.buckets {
            for (k, shard) in [&self.exp_avg, &self.exp_avg_sq, &self.master]
                .into_iter()
                .enumerate()
            {
                self.gather_bucket(dp, shard, bucket, |v| {
                    full_state
                        .get(v)
                        .and_then(|t| t[k].as_ref())
                        .map(Tensor::shallow_clone)
                })?;
            }
        }
        if !root {
            return Ok(None);
        }
        let mut named = vec![optim::step_tensor(self.step)];
        for ((name, _), tensors) in self.vars.iter().zip(full_state) {
            for (key, t) in optim::state_keys(name).into_iter().zip(tensors) {
                if let Some(t) = t {
                    named.push((key, t));
                }
            }
        }
        Ok(Some(named))
    }

    /// Takes this rank's part of a state saved by either optimizer: rank 0 passes the file
    /// (`saved`, checked beforehand by [`check_state_file`]), the others `None`; rank 0 sends
    /// it one bucket at a time. Every rank must call it.
    pub fn load_state(&mut self, dp: &DataParallel, saved: Option<&MappedFile>) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let tensors = saved.map(MappedFile::tensors).transpose()?;
        let views = match (&tensors, saved) {
            (Some(t), Some(file)) => Some(optim::saved_views(t, &file.path, &self.vars)?),
            _ => None,
        };
        let step = Tensor::from_slice(&[views.as_ref().map_or(0, |(s, _)| *s) as f64])
            .to_device(self.device());
        dp.broadcast(&[step.shallow_clone()])?;
        for bucket in &self.layout.buckets {
            for (k, into) in [&self.exp_avg, &self.exp_avg_sq, &self.master]
                .into_iter()
                .enumerate()
            {
                let full = self.bucket_buffer(bucket)?;
                if let (Some((_, vars)), Some(file)) = (&views, saved) {
                    for s in &bucket.segments {
                        let part = match saved_part(&vars[s.var], k) {
                            Some((key, view)) => host_slice(
                                view,
                                &file.path,
                                key,
                                s.var_start as usize,
                                s.len as usize,
                            )?,
                            // No master saved (fp32 weights): the weights are the master.
                            None => self.vars[s.var].1.f_reshape([-1])?.f_narrow(
                                0,
                                s.var_start,
                                s.len,
                            )?,
                        };
                        full.f_narrow(0, s.bucket_start, s.len)?.f_copy_(&part)?;
                    }
                }
                dp.broadcast(&[full.shallow_clone()])?;
                self.shard_of(into, bucket)?
                    .f_copy_(&self.layout.own(bucket, &full)?)?;
            }
        }
        self.step = step.to_device(Device::Cpu).double_value(&[0]) as i64;
        // The working weights follow the loaded masters (bf16: rounded).
        self.gather_weights(dp)
    }
}

impl Optimizer for ShardedAdamW {
    fn zero_grad(&mut self) -> Result<()> {
        self.release_or_zero_grads()
    }

    fn finish_update(
        &mut self,
        dp: Option<&DataParallel>,
        tokens: f64,
        lr: f64,
        max_norm: f64,
    ) -> Result<f64> {
        let dp = dp.ok_or_else(|| {
            TrainError::Invalid("a sharded optimizer trains only within its group".into())
        })?;
        self.sharded_update(dp, tokens, lr, max_norm)
    }
}

/// Saved tensor `k` (first moment, second moment, master) of one variable.
fn saved_part<'v, 'a>(var: &'v SavedVar<'a>, k: usize) -> Option<&'v (String, TensorView<'a>)> {
    match k {
        0 => Some(&var.exp_avg),
        1 => Some(&var.exp_avg_sq),
        _ => var.master.as_ref(),
    }
}

/// Opens the optimizer state at `path` and checks it against the trainable variables of `vs`
/// (every tensor present, with the variable's shape), for [`ShardedAdamW::load_state`]: rank 0
/// checks before the group commits to a load, so a bad file fails the load on every rank
/// instead of stalling the others half-way.
pub fn check_state_file(path: &Path, vs: &nn::VarStore) -> Result<MappedFile> {
    let file = MappedFile::open(path)?;
    optim::saved_views(&file.tensors()?, path, &optim::trainable_by_name(vs))?;
    Ok(file)
}
