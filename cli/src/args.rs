//! Flags shared by commands that load a model.

use anyhow::Result;
use clap::Args;
use rrlhf_model::device::set_threads;
use rrlhf_model::{LoraConfig, Placement};

#[derive(Args, Debug, Clone)]
pub struct RuntimeArgs {
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Parameter dtype: f32 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// libtorch intra-op threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

impl RuntimeArgs {
    /// Applies the thread setting and returns where to load models.
    pub fn placement(&self) -> Result<Placement> {
        set_threads(self.threads);
        Ok(Placement::parse(&self.device, &self.dtype)?)
    }
}

/// LoRA options (`--lora-rank 0`: no adapters, full fine-tuning).
#[derive(Args, Debug, Clone, Default)]
pub struct LoraArgs {
    /// Rank of the LoRA adapters; 0 trains every weight instead.
    #[arg(long, default_value_t = 0)]
    pub lora_rank: i64,
    /// LoRA α: the adapters' output is scaled by α / rank.
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f64,
    /// Dropout on the adapters' input while training (must be 0 with --activation-checkpointing).
    #[arg(long, default_value_t = 0.0)]
    pub lora_dropout: f64,
    /// Modules to adapt, by their HF names.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    )]
    pub lora_target_modules: Vec<String>,
}

impl LoraArgs {
    /// The adapters' settings, checked (also against `activation_checkpointing`), or `None`
    /// for full fine-tuning.
    pub fn config(&self, activation_checkpointing: bool) -> Result<Option<LoraConfig>> {
        if self.lora_rank == 0 {
            return Ok(None);
        }
        let cfg = LoraConfig {
            rank: self.lora_rank,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            target_modules: self.lora_target_modules.clone(),
        };
        cfg.validate_for(activation_checkpointing)
            .map_err(anyhow::Error::msg)?;
        Ok(Some(cfg))
    }
}
