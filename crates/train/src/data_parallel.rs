//! Data-parallel training of one model by several ranks (the actor's and the critic's), over a
//! c10d process group from `rrlhf-dist`.
//!
//! Each rank trains on its own shard of a batch. The ranks first agree on how many optimizer
//! updates the call takes (the largest shard decides; a rank out of samples contributes zero
//! gradients), then, every update, weigh their token-mean loss by their share of the update's
//! tokens and sum the gradients across ranks. The result is the gradient of the token mean
//! over the whole update, so N ranks on N shards take the update one rank would take on the
//! whole batch, and every rank applies the same update to the same weights. Weights (and the
//! AdamW state) are broadcast from rank 0 when a rank starts and after a checkpoint load.
//!
//! Every exit path issues the same collectives on every rank: a rank that cannot do its part
//! (bad request, failed loss or backward, no optimizer) still joins the next agreement with a
//! failure flag, so the others fail that call too instead of waiting for the timeout.

use std::cell::RefCell;

use rrlhf_dist::{DistError, GroupConfig, ProcessGroup, ReduceOp};
use tch::{Device, Kind, Tensor, nn};

use crate::error::{Result, TrainError};
use crate::optim::AdamW;
use crate::sampler::Order;
use crate::zero::{self, ZeroStage};

/// A rank's membership in its model's data-parallel group. After a failed collective the
/// group's state is unknown (ranks may be at different calls), so every later call fails fast
/// with the first error: the ranks must be restarted together.
pub struct DataParallel {
    group: ProcessGroup,
    /// Where control values (counts, flags) live: NCCL reduces CUDA tensors only.
    device: Device,
    failure: RefCell<Option<String>>,
    /// Whether the optimizer state (stage 1) and gradients (stage 2) are sharded over the ranks.
    zero: ZeroStage,
    /// Elements per reduce-scatter / all-gather transfer of the sharded optimizer.
    bucket_elements: i64,
}

impl std::fmt::Debug for DataParallel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataParallel")
            .field("group", &self.group)
            .field("zero", &self.zero)
            .finish()
    }
}

impl DataParallel {
    /// The group a training service's rank joins, from its place (rank, world size, store,
    /// backend, timeout, ZeRO stage — `rrlhf_runtime::ServerConfig::group`): none for a single
    /// rank (a ZeRO stage then has nothing to shard over); else the store (required), with the
    /// backend or the device's default.
    pub fn for_service(
        (rank, world_size, store, backend, timeout, zero_stage): (
            u32,
            u32,
            Option<&str>,
            Option<&str>,
            std::time::Duration,
            u32,
        ),
        device: tch::Device,
    ) -> Result<Option<Self>> {
        let zero = ZeroStage::from_level(zero_stage)?;
        if world_size <= 1 {
            return Ok(None);
        }
        let store = store.ok_or_else(|| {
            TrainError::Invalid(format!(
                "server.store_addr: required with world_size {world_size} (HOST:PORT of rank 0's \
                 TCPStore)"
            ))
        })?;
        let backend = match backend {
            Some(b) => b.parse().map_err(dist_error)?,
            None => rrlhf_dist::Backend::for_device(device),
        };
        Self::join(
            &GroupConfig {
                backend,
                store: store.to_owned(),
                rank: rank as usize,
                world_size: world_size as usize,
                timeout,
            },
            device,
        )
        .map(|dp| Some(dp.with_zero(zero)))
    }

    /// Joins the group (blocks until every rank has joined, up to the configured timeout) for
    /// a model on `device`.
    pub fn join(cfg: &GroupConfig, device: Device) -> Result<Self> {
        let group = ProcessGroup::new(cfg).map_err(dist_error)?;
        Ok(Self {
            group,
            device,
            failure: RefCell::new(None),
            zero: ZeroStage::Off,
            bucket_elements: zero::DEFAULT_BUCKET_ELEMENTS,
        })
    }

    /// This group with the optimizer sharded at `stage`.
    pub fn with_zero(mut self, stage: ZeroStage) -> Self {
        self.zero = stage;
        self
    }

    /// This group with sharded transfers of `elements` elements (at least 1): small buckets in
    /// tests make variables straddle them.
    pub fn with_bucket_elements(mut self, elements: i64) -> Self {
        self.bucket_elements = elements.max(1);
        self
    }

    pub fn zero(&self) -> ZeroStage {
        self.zero
    }

    pub fn bucket_elements(&self) -> i64 {
        self.bucket_elements
    }

    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    pub fn world_size(&self) -> usize {
        self.group.world_size()
    }

    /// Runs one collective, or refuses when an earlier one failed.
    fn collective(&self, f: impl FnOnce(&ProcessGroup) -> Result<(), DistError>) -> Result<()> {
        if let Some(first) = self.failure.borrow().as_ref() {
            return Err(TrainError::Invalid(format!(
                "the data-parallel group failed earlier ({first}); restart all {} ranks",
                self.world_size()
            )));
        }
        f(&self.group).map_err(|e| {
            let message = e.to_string();
            *self.failure.borrow_mut() = Some(message.clone());
            TrainError::Invalid(format!("rank {}: {message}", self.rank()))
        })
    }

    fn reduce(&self, values: &[f64], op: ReduceOp) -> Result<Vec<f64>> {
        let t = Tensor::from_slice(values).to_device(self.device);
        self.collective(|g| g.all_reduce(&[t.shallow_clone()], op))?;
        Ok(Vec::<f64>::try_from(&t.to_device(Device::Cpu))?)
    }

    /// Whether any rank (this one included) reports `failed`.
    pub fn any_failed(&self, failed: bool) -> Result<bool> {
        Ok(self.reduce(&[if failed { 1.0 } else { 0.0 }], ReduceOp::Max)?[0] > 0.0)
    }

    /// Whether every rank passed the same `values`: one max-reduction of `values` and their
    /// negatives gives the largest and (negated) the smallest of each.
    fn same_everywhere(&self, values: &[f64]) -> Result<bool> {
        let both: Vec<f64> = values
            .iter()
            .copied()
            .chain(values.iter().map(|v| -v))
            .collect();
        let reduced = self.reduce(&both, ReduceOp::Max)?;
        let (max, neg_min) = reduced.split_at(values.len());
        Ok(max.iter().zip(neg_min).all(|(hi, neg_lo)| *hi == -neg_lo))
    }

    /// Every rank says whether it can take part and proposes `counts`; all ranks learn the
    /// largest counts, or an error on every rank when any rank could not take part (it then
    /// reports its own reason to its caller).
    pub fn agree(&self, ok: bool, counts: &[f64]) -> Result<Vec<f64>> {
        let mut values = vec![if ok { 0.0 } else { 1.0 }];
        values.extend_from_slice(counts);
        let agreed = self.reduce(&values, ReduceOp::Max)?;
        if agreed[0] > 0.0 {
            return Err(TrainError::Invalid(if ok {
                "another data-parallel rank rejected its part of this call; see that rank's error"
                    .into()
            } else {
                "this rank rejected its part of the call".into()
            }));
        }
        Ok(agreed[1..].to_vec())
    }

    /// Element-wise sums of `values` over the ranks.
    pub fn sum(&self, values: &[f64]) -> Result<Vec<f64>> {
        self.reduce(values, ReduceOp::Sum)
    }

    /// Sums the flat `input` (world × k elements) over the ranks and writes this rank's k
    /// elements of the sum to `output`.
    pub fn reduce_scatter(&self, input: &Tensor, output: &Tensor) -> Result<()> {
        self.collective(|g| g.reduce_scatter(input, output, ReduceOp::Sum))
    }

    /// Writes every rank's flat `input` (k elements), in rank order, into `output` (world × k).
    pub fn all_gather(&self, input: &Tensor, output: &Tensor) -> Result<()> {
        self.collective(|g| g.all_gather(input, output))
    }

    /// Overwrites `tensors` with rank 0's.
    pub fn broadcast(&self, tensors: &[Tensor]) -> Result<()> {
        if tensors.is_empty() {
            return Ok(());
        }
        let _guard = tch::no_grad_guard();
        self.collective(|g| g.broadcast(tensors, 0))
    }

    /// Makes every trainable weight of `vs` equal to rank 0's, after checking that every rank
    /// holds the same layout (names, shapes, dtype): a broadcast between different models would
    /// fail on sizes at best, and scramble weights when only the totals match.
    pub fn broadcast_parameters(&self, vs: &nn::VarStore) -> Result<()> {
        let vars = crate::optim::trainable_by_name(vs);
        if !self.same_everywhere(&layout_fingerprint(&vars))? {
            return Err(TrainError::Invalid(format!(
                "the {} data-parallel ranks hold models of different layouts (names, shapes or \
                 dtype); start every rank from the same model",
                self.world_size()
            )));
        }
        let tensors: Vec<Tensor> = vars.into_iter().map(|(_, t)| t).collect();
        self.broadcast(&tensors)
    }

    /// Makes the optimizer state equal to rank 0's: absent on every rank when rank 0 has none,
    /// else rank 0's moments and step count (ranks without one create it first).
    pub fn broadcast_optimizer(
        &self,
        slot: &mut Option<AdamW>,
        vs: &nn::VarStore,
        weight_decay: f64,
    ) -> Result<()> {
        let steps = slot.as_ref().map_or(-1.0, |o| o.steps() as f64);
        let t = Tensor::from_slice(&[steps]).to_device(self.device);
        self.broadcast(&[t.shallow_clone()])?;
        let steps = t.to_device(Device::Cpu).double_value(&[0]);
        if steps < 0.0 {
            *slot = None;
            return Ok(());
        }
        // A rank that cannot create its optimizer says so before the moments travel.
        let created = match slot {
            Some(_) => Ok(()),
            None => AdamW::new(vs, weight_decay).map(|o| {
                *slot = Some(o);
            }),
        };
        if self.any_failed(created.is_err())? {
            created?;
            return Err(TrainError::Invalid(
                "another data-parallel rank could not create its optimizer".into(),
            ));
        }
        let opt = slot.as_mut().expect("created above");
        self.broadcast(&opt.moments())?;
        opt.set_steps(steps as i64);
        Ok(())
    }

    /// Sums every gradient of `opt` over the ranks, in place and in fp32 (bf16 gradients are
    /// summed as the optimizer's fp32 copies), together with this rank's `failed` flag; returns
    /// whether any rank failed (its gradients then mean nothing).
    pub fn sum_gradients(&self, opt: &mut AdamW, failed: bool) -> Result<bool> {
        let mut grads = opt.gradients()?;
        let like = grads
            .first()
            .ok_or_else(|| TrainError::Invalid("no gradients to reduce".into()))?;
        let flag = Tensor::from_slice(&[if failed { 1.0f32 } else { 0.0 }])
            .to_kind(like.kind())
            .to_device(like.device());
        grads.push(flag.shallow_clone());
        self.collective(|g| g.all_reduce(&grads, ReduceOp::Sum))?;
        Ok(flag.to_device(Device::Cpu).double_value(&[0]) > 0.0)
    }
}

fn dist_error(e: DistError) -> TrainError {
    TrainError::Invalid(e.to_string())
}

/// Number of tensors, of elements, and a hash of names, shapes and dtypes (below 2^52, so it
/// survives the trip through an f64 reduction).
fn layout_fingerprint(vars: &[(String, Tensor)]) -> [f64; 3] {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut elements = 0i64;
    for (name, t) in vars {
        name.hash(&mut h);
        t.size().hash(&mut h);
        format!("{:?}", t.kind()).hash(&mut h);
        elements += t.numel() as i64;
    }
    [
        vars.len() as f64,
        elements as f64,
        (h.finish() >> 12) as f64,
    ]
}

/// Tells the other ranks that this one cannot take part in the training call they are in
/// (it was rejected before any update), so they fail it instead of waiting.
pub fn abstain(dp: Option<&DataParallel>) {
    if let Some(dp) = dp {
        // The first collective of `run_updates`: an agreement on one count.
        let _ = dp.agree(false, &[0.0]);
    }
}

/// Σ w + Σ w² over the trainable weights, in f64: equal on ranks that hold equal weights, and
/// different after almost any drift. Reported with every training call.
/// Read in chunks of 1 Mi elements, so it never holds more than one chunk in f64.
pub fn checksum(vs: &nn::VarStore) -> f64 {
    let _guard = tch::no_grad_guard();
    let mut total = 0.0;
    for (_, t) in crate::optim::trainable_by_name(vs) {
        for chunk in t.reshape([-1]).split(1 << 20, 0) {
            let c = chunk.to_kind(Kind::Double);
            total += c.sum(Kind::Double).double_value(&[])
                + c.square().sum(Kind::Double).double_value(&[]);
        }
    }
    total
}

/// How one training call walks its samples (the settings of a `Train` request).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdatePlan {
    /// Samples per update on this rank (0: all of them).
    pub minibatch_size: usize,
    /// Samples per forward/backward pass within an update (0: the whole mini-batch); the
    /// micro-batches' gradients are accumulated, token-weighted, into the update. They are cut
    /// from the mini-batch sorted by length (packing), which leaves the mini-batch alone.
    pub micro_batch_size: usize,
    pub epochs: usize,
    pub seed: u64,
    pub lr: f64,
    pub max_grad_norm: f64,
}

impl UpdatePlan {
    /// The plan of a `Train` request (fields as the actor and critic protos spell them; at
    /// least one epoch).
    pub fn of_request(
        (minibatch_size, micro_batch_size): (u32, u32),
        epochs: u32,
        lr: f32,
        max_grad_norm: f32,
        seed: u64,
    ) -> Self {
        Self {
            minibatch_size: minibatch_size as usize,
            micro_batch_size: micro_batch_size as usize,
            epochs: epochs.max(1) as usize,
            seed,
            lr: lr as f64,
            max_grad_norm: max_grad_norm as f64,
        }
    }
}

/// What a `Train` call reports whatever its loss: the loss of its first and last update and
/// their mean, how many updates ran, their mean gradient norm (before clipping), and the
/// [`checksum`] of the weights after them.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct UpdateSummary {
    pub loss_first: f64,
    pub loss_last: f64,
    pub loss_mean: f64,
    pub updates: usize,
    pub grad_norm_mean: f64,
    pub param_checksum: f64,
}

impl UpdateSummary {
    /// The summary of `done` (each update's reported stats and gradient norm, as
    /// [`run_updates`] returns them), `loss` reading an update's loss from its stats, for the
    /// model in `vs`.
    pub fn of<S>(done: &[(S, f64)], loss: impl Fn(&S) -> f64, vs: &nn::VarStore) -> Self {
        Self {
            loss_first: done.first().map_or(0.0, |(s, _)| loss(s)),
            loss_last: done.last().map_or(0.0, |(s, _)| loss(s)),
            loss_mean: mean_of(done.iter().map(|(s, _)| loss(s))),
            updates: done.len(),
            grad_norm_mean: mean_of(done.iter().map(|(_, g)| *g)),
            param_checksum: checksum(vs),
        }
    }
}

/// The mean of `values` (0 for none).
pub fn mean_of(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    sum / n.max(1) as f64
}

/// What one update's loss function returns: the loss (a mean over `tokens` tokens) and
/// whatever the caller wants reported about it.
pub struct MinibatchLoss<S> {
    pub loss: Tensor,
    pub tokens: f64,
    pub stats: S,
}

impl<S> MinibatchLoss<S> {
    /// A loss averaged over the tokens where `mask` (laid out like the loss's inputs) is 1.
    pub fn masked(loss: Tensor, mask: &[f32], stats: S) -> Self {
        Self {
            loss,
            tokens: mask.iter().map(|&m| m as f64).sum(),
            stats,
        }
    }
}

/// Runs `epochs × ⌈samples / minibatch⌉` AdamW updates over seeded mini-batches of sample
/// indices, each loss built by `loss_of`; with `dp`, in step with the other ranks as the module
/// describes. Returns each local update's stats and the gradient norm it saw. When one rank's
/// loss fails, every rank stops at that update with an error (the weights have then taken the
/// updates before it, on every rank alike).
pub fn run_updates<S: TokenMean>(
    opt: &mut dyn Optimizer,
    dp: Option<&DataParallel>,
    lengths: &[usize],
    plan: &UpdatePlan,
    mut loss_of: impl FnMut(&[usize]) -> Result<MinibatchLoss<S>>,
) -> Result<Vec<(S, f64)>> {
    let n = lengths.len();
    let mb = if plan.minibatch_size == 0 {
        n
    } else {
        plan.minibatch_size.min(n)
    };
    let local = if n == 0 {
        0
    } else {
        plan.epochs.max(1) * n.div_ceil(mb)
    };
    let total = match dp {
        Some(dp) => dp.agree(true, &[local as f64])?[0] as usize,
        None => local,
    };
    let mut order = Order::new(n.max(1), plan.seed);
    let mut out = Vec::with_capacity(local);
    for update in 0..total {
        let idx: Vec<usize> = if update < local {
            (0..mb).map(|_| order.next()).collect()
        } else {
            Vec::new()
        };
        // This rank's part of the update: the gradient of the *sum* of its token losses,
        // accumulated over micro-batches; the division by every rank's token total comes after
        // the (fp32) gradient sum, so the update equals one pass over the whole mini-batch.
        let part = accumulate(opt, &idx, lengths, plan.micro_batch_size, &mut loss_of);
        let (tokens, failed) = match &part {
            Ok(p) => (p.as_ref().map_or(0.0, |p| p.1), 0.0),
            Err(_) => (0.0, 1.0),
        };
        let Some(dp) = dp else {
            let (stats, tokens) = part?.expect("a single rank has samples in each of its updates");
            let norm = opt.finish_update(None, tokens.max(1.0), plan.lr, plan.max_grad_norm)?;
            out.push((stats, norm));
            continue;
        };
        // The token count travels with a failure flag: a rank whose loss or backward failed
        // (bad input, out of memory) makes every rank stop here instead of waiting for its
        // gradients.
        let totals = dp.sum(&[tokens, failed])?;
        let part = part?;
        if totals[1] > 0.0 {
            return Err(TrainError::Invalid(format!(
                "another data-parallel rank could not compute its loss in update {} of {total} \
                 (or its gradients); see that rank's error",
                update + 1
            )));
        }
        let norm = opt.finish_update(Some(dp), totals[0], plan.lr, plan.max_grad_norm)?;
        if let Some((stats, _)) = part {
            out.push((stats, norm));
        }
    }
    Ok(out)
}

/// Token lengths (prompt + response) of `(prompt, response)` pairs: what [`run_updates`] packs
/// micro-batches by.
pub fn pair_lengths(pairs: &[(Vec<i64>, Vec<i64>)]) -> Vec<usize> {
    pairs.iter().map(|(p, r)| p.len() + r.len()).collect()
}

/// Backpropagates the token-summed loss of samples `idx` in micro-batches of `micro` samples
/// (0: all at once), adding up the gradients; returns the token-weighted mean of the
/// micro-batches' stats and the token count (none when `idx` is empty: zero gradients). A
/// failing or panicking loss is this rank's error.
///
/// Micro-batches are packed by length: the mini-batch's samples are sorted by `lengths` (ties
/// in mini-batch order) before they are cut, so each micro-batch pads to similar lengths. The
/// update is unchanged: it sums the same samples' token losses, in another order.
fn accumulate<S: TokenMean>(
    opt: &mut dyn Optimizer,
    idx: &[usize],
    lengths: &[usize],
    micro: usize,
    loss_of: &mut impl FnMut(&[usize]) -> Result<MinibatchLoss<S>>,
) -> Result<Option<(S, f64)>> {
    opt.zero_grad()?;
    if idx.is_empty() {
        return Ok(None);
    }
    let micro = if micro == 0 { idx.len() } else { micro };
    let mut packed = idx.to_vec();
    if micro < idx.len() {
        packed.sort_by_key(|&i| lengths[i]);
    }
    let mut parts = Vec::with_capacity(idx.len().div_ceil(micro));
    for chunk in packed.chunks(micro) {
        // A panicking libtorch call (tch's non-`f_` operations) becomes this rank's error, so
        // it still joins the agreement that follows.
        let m = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loss_of(chunk)))
            .unwrap_or_else(|panic| Err(TrainError::Invalid(panic_message(&*panic))))?;
        opt.accumulate(&m.loss.f_mul_scalar(m.tokens)?)?;
        parts.push((m.stats, m.tokens));
    }
    let tokens = parts.iter().map(|(_, t)| t).sum();
    Ok(Some((S::token_mean(parts), tokens)))
}

/// What [`run_updates`] needs of an optimizer: the replicated [`AdamW`] or the sharded
/// [`crate::zero::ShardedAdamW`].
pub trait Optimizer {
    /// Zeroes (or releases) the gradients before an update's first backward.
    fn zero_grad(&mut self) -> Result<()>;
    /// Backpropagates `loss`, adding to the gradients already there.
    fn accumulate(&mut self, loss: &Tensor) -> Result<()> {
        Ok(loss.f_backward()?)
    }
    /// Ends an update whose gradients of token-summed losses this rank holds: with `dp`,
    /// combines them with every other rank's; divides by `tokens` (all ranks' count), clips to
    /// `max_norm` (if > 0) and steps at `lr`. Returns the gradient norm before clipping.
    fn finish_update(
        &mut self,
        dp: Option<&DataParallel>,
        tokens: f64,
        lr: f64,
        max_norm: f64,
    ) -> Result<f64>;
}

impl Optimizer for AdamW {
    fn zero_grad(&mut self) -> Result<()> {
        AdamW::zero_grad(self)
    }

    fn finish_update(
        &mut self,
        dp: Option<&DataParallel>,
        tokens: f64,
        lr: f64,
        max_norm: f64,
    ) -> Result<f64> {
        if let Some(dp) = dp {
            // Every rank sends the same list of gradients, zero where its samples reached none.
            self.define_missing_gradients()?;
            dp.sum_gradients(self, false)?;
        }
        self.scale_gradients(if tokens > 0.0 { 1.0 / tokens } else { 0.0 })?;
        self.apply(lr, max_norm)
    }
}

/// Statistics of an update that micro-batches combine: their mean weighted by tokens (each
/// micro-batch's statistic is itself a mean over its tokens).
pub trait TokenMean: Sized {
    fn token_mean(parts: Vec<(Self, f64)>) -> Self;
}

/// No statistics.
impl TokenMean for () {
    fn token_mean(_: Vec<(Self, f64)>) -> Self {}
}

impl TokenMean for f64 {
    fn token_mean(parts: Vec<(Self, f64)>) -> Self {
        let tokens: f64 = parts.iter().map(|(_, t)| t).sum();
        let sum: f64 = parts.iter().map(|(x, t)| x * t).sum();
        if tokens > 0.0 { sum / tokens } else { 0.0 }
    }
}

impl TokenMean for (f64, f64, f64, f64) {
    fn token_mean(parts: Vec<(Self, f64)>) -> Self {
        let field =
            |f: fn(&Self) -> f64| f64::token_mean(parts.iter().map(|(s, t)| (f(s), *t)).collect());
        (
            field(|s| s.0),
            field(|s| s.1),
            field(|s| s.2),
            field(|s| s.3),
        )
    }
}

/// A loss of 0 that reaches the first weight (its backward gives defined, zero gradients).
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message");
    format!("computing the loss panicked: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::Module;
    use tch::{Device, Kind};

    /// Micro-batches are cut from the mini-batch sorted by length, so each pads to similar
    /// lengths; the mini-batches themselves (which samples share an update) are the plan's.
    #[test]
    fn micro_batches_are_packed_by_length() {
        let vs = nn::VarStore::new(Device::Cpu);
        let layer = nn::linear(vs.root() / "layer", 1, 1, Default::default());
        let mut opt = crate::optim::AdamW::new(&vs, 0.0).unwrap();
        let lengths = [9, 1, 8, 2, 7, 3, 6, 4];
        let plan = |micro_batch_size| UpdatePlan {
            minibatch_size: 4,
            micro_batch_size,
            epochs: 1,
            seed: 3,
            lr: 0.01,
            max_grad_norm: 0.0,
        };
        let mut calls: Vec<Vec<usize>> = Vec::new();
        for micro in [0, 2] {
            run_updates(&mut opt, None, &lengths, &plan(micro), |idx| {
                calls.push(idx.to_vec());
                let x = Tensor::ones([idx.len() as i64, 1], (Kind::Float, Device::Cpu));
                Ok(MinibatchLoss {
                    loss: layer.forward(&x).sum(Kind::Float),
                    tokens: idx.len() as f64,
                    stats: (),
                })
            })
            .unwrap();
        }
        // Without micro-batches: two updates of 4. With micro-batches of 2: the same two
        // mini-batches, each cut after sorting its samples by length.
        let (whole, micro) = calls.split_at(2);
        assert_eq!(micro.len(), 4);
        for (mini, parts) in whole.iter().zip(micro.chunks(2)) {
            let mut sorted = mini.clone();
            sorted.sort_by_key(|&i| lengths[i]);
            assert_eq!(parts.concat(), sorted, "{mini:?} → {parts:?}");
        }
    }
}
