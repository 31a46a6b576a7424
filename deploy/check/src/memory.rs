//! Whether a training rank (actor or critic) of the model a placement is sized for fits its
//! GPU: docs/deployment.md's arithmetic for Llama-3-8B, evaluated with the settings it depends
//! on — the group's size (replicas), `server.zero_stage`, `activation_checkpointing` and the
//! orchestrator's `ppo.<svc>.micro_batch_size` — so changing any of them in a way that no
//! longer fits fails the check, naming the file and field. (`engine.dtype = "bf16"`, which the
//! arithmetic also assumes, is checked for every deployment in `validate`.)

use anyhow::{Context, Result, bail, ensure};

/// The model shapes the check knows (`rrlhf-placement`'s `sized_for`).
struct ModelShape {
    params: f64,
    /// Bytes kept per 1k-token sequence during backward, with and without checkpointing: the
    /// layer inputs (or all saved activations) plus the LM head's logits, f32 copies and
    /// gradient (docs/deployment.md's table).
    per_sequence_checkpointed: f64,
    per_sequence_full: f64,
}

fn shape(name: &str) -> Result<ModelShape> {
    match name {
        "llama-3-8b" => Ok(ModelShape {
            params: 8.03e9,
            per_sequence_checkpointed: 0.3e9 + 2.4e9,
            per_sequence_full: 10.0e9 + 2.4e9,
        }),
        other => bail!("rrlhf-placement: sized_for = {other:?}; known: \"llama-3-8b\""),
    }
}

/// Share of the GPU the estimate may take: the rest is left to the CUDA context, NCCL's
/// buffers, the caching allocator's fragmentation and the transients the count leaves out
/// (`bench/README.md`: 0.2–0.5 GiB on a 0.1 B model).
const USABLE: f64 = 0.9;

/// One training rank's memory in GB for `world` ranks at ZeRO `zero`, bf16, `micro`
/// sequences of 1k tokens per backward pass.
fn rank_gb(m: &ModelShape, world: u64, zero: u64, micro: u64, checkpointing: bool) -> f64 {
    let p = m.params;
    // bf16 weights and gradients, then 16 bytes per parameter of fp32 state — master,
    // two moments, and the gradient in fp32 (a replicated group's reduction copies; under
    // ZeRO the reduced shard) — whole, or this rank's 1/N.
    let state = if zero >= 1 {
        16.0 * p / world.max(1) as f64
    } else {
        16.0 * p
    };
    let per_sequence = if checkpointing {
        m.per_sequence_checkpointed
    } else {
        m.per_sequence_full
    };
    (4.0 * p + state + micro as f64 * per_sequence) / 1e9
}

/// Checks `svc`'s ranks (`ranks` of them) for model `model` on GPUs of `gpu_gb`; `file` reads
/// a file of the rrlhf-config ConfigMap.
pub fn check_rank_fits(
    svc: &str,
    model: &str,
    gpu_gb: f64,
    ranks: u64,
    file: impl Fn(&str) -> Option<String>,
) -> Result<()> {
    let m = shape(model)?;
    let name = format!("{svc}.toml");
    let cfg: toml::Value = file(&name)
        .with_context(|| format!("rrlhf-config has no {name}"))?
        .parse()
        .with_context(|| name.clone())?;
    let zero = cfg
        .get("server")
        .and_then(|s| s.get("zero_stage"))
        .and_then(toml::Value::as_integer)
        .unwrap_or(0) as u64;
    let checkpointing = cfg
        .get("activation_checkpointing")
        .and_then(toml::Value::as_bool)
        .unwrap_or(false);
    let orch: toml::Value = file("orchestrator.toml")
        .context("rrlhf-config has no orchestrator.toml")?
        .parse()
        .context("orchestrator.toml")?;
    let batch = orch
        .get("run")
        .and_then(|r| r.get("batch_size"))
        .and_then(toml::Value::as_integer)
        .unwrap_or(128) as u64;
    let train = orch.get("ppo").and_then(|p| p.get(svc));
    let setting = |key: &str, default: i64| {
        train
            .and_then(|t| t.get(key))
            .and_then(toml::Value::as_integer)
            .unwrap_or(default) as u64
    };
    // A rank's shard of the batch bounds its mini-batch, which bounds the micro-batch (0:
    // the whole mini-batch in one pass).
    let shard = batch.div_ceil(ranks.max(1));
    let minibatch = match setting("minibatch_size", 32) {
        0 => shard,
        n => n.min(shard),
    };
    let micro = match setting("micro_batch_size", 0) {
        0 => minibatch,
        n => n.min(minibatch),
    };
    let need = rank_gb(&m, ranks, zero, micro, checkpointing);
    let usable = USABLE * gpu_gb;
    ensure!(
        need <= usable,
        "{svc}: a {model} rank needs ≈ {need:.0} GB, more than {usable:.0} GB ({:.0}% of \
         gpu_memory_gb = {gpu_gb}), with {ranks} ranks, {name} server.zero_stage = {zero} and \
         activation_checkpointing = {checkpointing}, and orchestrator.toml \
         ppo.{svc}.micro_batch_size giving {micro} sequences per pass",
        USABLE * 100.0
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_configurations_come_out_as_the_table_says() {
        let m = shape("llama-3-8b").unwrap();
        // docs/deployment.md: replicated, 160.6 GB of state and weights before activations.
        assert!((rank_gb(&m, 10, 0, 0, true) - 160.6).abs() < 0.1);
        // ZeRO-2 over 10 ranks, micro-batches of 2 with checkpointing: ≈ 50 GB.
        assert!((rank_gb(&m, 10, 2, 2, true) - 50.4).abs() < 0.1);
    }
}
