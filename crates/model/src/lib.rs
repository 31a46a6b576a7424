//! `rrlhf-model`: the tensor side of rrlhf, on libtorch through tch.
//!
//! A Llama-family decoder ([`llama`]) that loads Hugging Face checkpoints unchanged
//! ([`config`], [`checkpoint`]), heads for language modelling, values and the Bayesian reward
//! ensemble ([`heads`]), continuous-batching sampling over a preallocated KV cache
//! ([`generate`], [`rollout`]), the RLHF losses ([`losses`]) and HF tokenizers ([`tokenizer`]). Nothing here does networking: services wrap these types.

pub mod batch;
pub mod causal_lm;
pub mod checkpoint;
pub mod config;
pub mod device;
pub mod ensemble;
pub mod error;
pub mod fsio;
pub mod generate;
pub mod grad;
pub mod heads;
pub mod kv_cache;
pub mod llama;
pub mod lora;
pub mod losses;
pub mod mask;
pub mod recompute;
pub mod reward_model;
pub mod rollout;
pub mod rope;
pub mod scoring;
pub mod tensor_files;
pub mod tokenizer;
pub mod tower;

pub use batch::{Batch, PadSide};
pub use causal_lm::CausalLm;
pub use config::{Arch, ModelConfig, SizePreset};
pub use device::Placement;
pub use error::{ModelError, Result};
pub use generate::{FinishReason, Generation, SamplingParams, generate};
pub use lora::LoraConfig;
pub use reward_model::{RewardKind, RewardMeta, RewardModel};
pub use tokenizer::TextTokenizer;
