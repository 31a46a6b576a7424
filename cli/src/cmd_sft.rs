//! `rrlhf sft`: supervised fine-tuning into a new Hugging Face model directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use rrlhf_train::sft::{SftConfig, SftOutcome};

use crate::args::{LoraArgs, RuntimeArgs};
use crate::cmd_model::load_with_tokenizer;

#[derive(Args, Debug, Clone)]
pub struct SftArgs {
    /// Model directory to start from (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// HH-RLHF JSONL(.gz), `{"prompt","response"}` JSONL, `{"text"}` JSONL or plain text.
    #[arg(long)]
    pub data: PathBuf,
    /// Where the fine-tuned model is written (with train_log.jsonl and sft_summary.json); with
    /// LoRA, the adapter in PEFT's layout (adapter_config.json, adapter_model.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 200)]
    pub steps: usize,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Examples per forward/backward pass (0: the whole batch); gradients are accumulated into
    /// the same update, which bounds activation memory.
    #[arg(long, default_value_t = 0)]
    pub micro_batch_size: usize,
    /// Recompute each decoder layer's activations in backward instead of keeping them (less
    /// memory, one more forward pass).
    #[arg(long)]
    pub activation_checkpointing: bool,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 20)]
    pub warmup_steps: usize,
    #[arg(long, default_value_t = 256)]
    pub max_len: usize,
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f64,
    #[arg(long, default_value_t = 0.05)]
    pub eval_fraction: f64,
    /// Measure the held-out loss every N steps (0: before and after only).
    #[arg(long, default_value_t = 0)]
    pub eval_every: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub lora: LoraArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

pub fn run(args: SftArgs) -> Result<()> {
    let outcome = sft(&args, true)?;
    println!(
        "sft: {} steps on {} examples ({} held out, {} skipped): held-out loss {:.4} → {:.4} in {:.0}s → {}",
        outcome.steps,
        outcome.train_examples,
        outcome.eval_examples,
        outcome.skipped_examples,
        outcome.initial_eval_loss,
        outcome.final_eval_loss,
        outcome.seconds,
        args.out.display()
    );
    Ok(())
}

/// Runs SFT as configured by `args` and saves the model, tokenizer, log and summary.
pub fn sft(args: &SftArgs, show_progress: bool) -> Result<SftOutcome> {
    let placement = args.runtime.placement()?;
    let lora = args.lora.config(args.activation_checkpointing)?;
    let (mut model, tok) = load_with_tokenizer(&args.model, placement)?;
    model.backbone.activation_checkpointing = args.activation_checkpointing;
    if let Some(cfg) = &lora {
        model.add_lora(cfg)?;
    }
    let data = rrlhf_data::sft::load(&args.data).context("reading the SFT data")?;
    let cfg = SftConfig {
        steps: args.steps,
        batch_size: args.batch_size,
        micro_batch_size: args.micro_batch_size,
        lr: args.lr,
        warmup_steps: args.warmup_steps,
        grad_clip: args.grad_clip,
        max_len: args.max_len,
        eval_fraction: args.eval_fraction,
        eval_every: args.eval_every,
        seed: args.seed,
        show_progress,
        ..SftConfig::default()
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let outcome = rrlhf_train::sft::train(
        &model,
        &tok,
        &data,
        &cfg,
        Some(&args.out.join("train_log.jsonl")),
    )?;
    if lora.is_some() {
        model
            .save_adapter(&args.out, &args.model.display().to_string())
            .with_context(|| format!("saving the adapter to {}", args.out.display()))?;
    } else {
        model
            .save(&args.out)
            .with_context(|| format!("saving {}", args.out.display()))?;
    }
    tok.save_to(&args.out)?;
    write_json(&args.out.join("sft_summary.json"), &outcome)?;
    Ok(outcome)
}

pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    rrlhf_model::fsio::write_atomic(path, text.as_bytes())?;
    Ok(())
}
