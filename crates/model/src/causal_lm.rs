//! A causal language model: backbone + LM head, loaded from and saved to a Hugging Face model
//! directory (`config.json`, `model.safetensors`, `tokenizer.json`).

use std::path::Path;

use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use crate::batch::Batch;
use crate::checkpoint;
use crate::config::ModelConfig;
use crate::device::{Placement, dtype_name};
use crate::error::{ModelError, Result};
use crate::heads::LmHead;
use crate::kv_cache::CacheStep;
use crate::llama::{Backbone, ParamInit};
use crate::lora::{self, LoraConfig, PeftTask};

pub const TOKENIZER_FILE: &str = "tokenizer.json";

#[derive(Debug)]
pub struct CausalLm {
    pub vs: nn::VarStore,
    pub cfg: ModelConfig,
    pub backbone: Backbone,
    pub lm_head: LmHead,
}

impl CausalLm {
    /// A randomly initialised model (N(0, 0.02) weights, unit norms).
    pub fn new(cfg: ModelConfig, placement: Placement) -> Result<Self> {
        Ok(Self::build(cfg, placement, ParamInit::Random))
    }

    fn build(cfg: ModelConfig, placement: Placement, fill: ParamInit) -> Self {
        let vs = placement.var_store(fill);
        let root = vs.root();
        let backbone = Backbone::new(&root / "model", &cfg, fill);
        let lm_head = LmHead::new(
            &root,
            &backbone.embed_tokens.ws,
            cfg.hidden_size,
            cfg.vocab_size,
            cfg.tie_word_embeddings,
            fill,
        );
        Self {
            vs: placement.finish_var_store(vs),
            cfg,
            backbone,
            lm_head,
        }
    }

    /// Loads `DIR` strictly: every tensor must match the config by name and shape. A tied
    /// model tolerates a redundant `lm_head.weight` in the file, as transformers does. The
    /// parameters are allocated once, in the target dtype on the target device, and filled
    /// from the memory-mapped file one tensor at a time.
    pub fn from_dir(dir: &Path, placement: Placement) -> Result<Self> {
        let cfg = ModelConfig::from_dir(dir)?;
        let model = Self::build(cfg, placement, ParamInit::Unfilled);
        checkpoint::load_strict(&model.vs, dir, model.cfg.tie_word_embeddings)?;
        Ok(model)
    }

    /// Writes config and weights into `dir` (created if needed), each file atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let mut cfg = self.cfg.clone();
        let kind = self.backbone.embed_tokens.ws.kind();
        // 4.x reads `torch_dtype`, 5.x `dtype`.
        cfg.raw
            .insert("torch_dtype".into(), dtype_name(kind).into());
        cfg.raw.insert("dtype".into(), dtype_name(kind).into());
        checkpoint::save(&self.vs, &[], dir)?;
        cfg.write(dir)
    }

    /// Adds LoRA adapters (see [`crate::lora`]) and freezes every other parameter, so training
    /// updates the adapters only.
    pub fn add_lora(&mut self, cfg: &LoraConfig) -> Result<()> {
        let root = self.vs.root();
        self.backbone.add_lora(&root / "model", cfg)?;
        for (name, var) in self.vs.variables() {
            if !lora::is_adapter_tensor(&name) {
                let _ = var.set_requires_grad(false);
            }
        }
        Ok(())
    }

    /// Loads a PEFT adapter directory onto this (base) model.
    pub fn load_adapter(&mut self, dir: &Path) -> Result<()> {
        let cfg = lora::read_peft_config(dir)?;
        self.add_lora(&cfg)?;
        lora::load_adapter_weights(&self.vs, PeftTask::CausalLm, dir)
    }

    /// Writes the adapters as a PEFT directory (`base` goes into `base_model_name_or_path`).
    pub fn save_adapter(&self, dir: &Path, base: &str) -> Result<()> {
        let (cfg, _) = self.backbone.lora().ok_or_else(|| {
            ModelError::InvalidInput("the model has no LoRA adapters to save".into())
        })?;
        lora::save_adapter(&self.vs, cfg, base, PeftTask::CausalLm, dir)
    }

    /// Writes what training changes into `dir`: the whole model, or with LoRA only the adapters
    /// (PEFT layout; `base` names the model they adapt).
    pub fn save_trainable(&self, dir: &Path, base: &str) -> Result<()> {
        match self.backbone.lora() {
            Some(_) => self.save_adapter(dir, base),
            None => self.save(dir),
        }
    }

    /// Loads what [`Self::save_trainable`] wrote, validating all of it before copying any.
    pub fn load_trainable(&self, dir: &Path) -> Result<()> {
        match self.backbone.lora() {
            Some(_) => lora::load_adapter_weights(&self.vs, PeftTask::CausalLm, dir),
            None => checkpoint::load_strict(&self.vs, dir, self.cfg.tie_word_embeddings),
        }
    }

    /// Folds the adapters into the weights: the model then computes what the adapted one did,
    /// and [`Self::save`] writes a plain checkpoint.
    pub fn merge_lora(&mut self) {
        self.backbone.merge_lora();
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    pub fn kind(&self) -> Kind {
        self.backbone.embed_tokens.ws.kind()
    }

    /// Full-sequence logits `[B, T, V]` (f32).
    pub fn logits(
        &self,
        ids: &Tensor,
        mask: Option<&Tensor>,
        positions: &Tensor,
        cache: Option<CacheStep<'_>>,
    ) -> Tensor {
        let hidden = self.backbone.forward(ids, mask, positions, cache);
        self.lm_head.forward(&hidden).to_kind(Kind::Float)
    }

    /// Logits `[B, V]` (f32) at one position per row, `at[b]`: what generation needs, without
    /// the `[B, T, V]` logits of every position.
    pub fn logits_at(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        cache: Option<CacheStep<'_>>,
        at: &[i64],
    ) -> Tensor {
        let hidden = self.backbone.forward(ids, None, positions, cache);
        let (b, _, h) = hidden.size3().expect("hidden states are [B, T, H]");
        let index = Tensor::from_slice(at)
            .to_device(hidden.device())
            .view([b, 1, 1])
            .expand([b, 1, h], false);
        let picked = hidden.gather(1, &index, false).squeeze_dim(1);
        self.lm_head.forward(&picked).to_kind(Kind::Float)
    }

    /// Logits of a padded batch.
    pub fn batch_logits(&self, batch: &Batch) -> Tensor {
        self.logits(&batch.ids, batch.attention_mask(), &batch.positions, None)
    }

    /// Logits `[B, T-from, V]` (f32) of a padded batch at positions `from..T` only: every
    /// position still attends to all before it, but the LM head (a large share of a small
    /// model's work, and of its memory) and anything computed from its output skip the
    /// positions before `from`, such as a prompt whose tokens are never scored.
    pub fn window_logits(&self, batch: &Batch, from: i64) -> Tensor {
        let hidden =
            self.backbone
                .forward(&batch.ids, batch.attention_mask(), &batch.positions, None);
        let t = hidden.size()[1];
        let from = from.clamp(0, t - 1);
        self.lm_head
            .forward(&hidden.narrow(1, from, t - from))
            .to_kind(Kind::Float)
    }

    /// `[B, T-1]` log-probabilities of each token given those before it (`out[:, t-1]` is
    /// log p(ids[t] | ids[..t])). Entries whose target is padding are meaningless; mask them.
    pub fn token_logprobs(&self, batch: &Batch) -> Tensor {
        self.token_logprobs_from(batch, 0)
    }

    /// Columns `from..` of [`Self::token_logprobs`] (`[B, T-1-from]`: `out[:, t-1-from]` is
    /// log p(ids[t] | ids[..t])), computing the LM head only where they need it.
    pub fn token_logprobs_from(&self, batch: &Batch, from: i64) -> Tensor {
        self.window_logprobs(batch, from).1
    }

    /// [`Self::window_logits`] and the log-probs they give ([`Self::token_logprobs_from`]),
    /// for callers that need both (training, whose entropy reads the logits).
    pub fn window_logprobs(&self, batch: &Batch, from: i64) -> (Tensor, Tensor) {
        let logits = self.window_logits(batch, from);
        let width = logits.size()[1];
        let targets = batch.ids.narrow(1, batch.ids.size()[1] - width, width);
        let logp = shifted_logprobs(&logits, &targets);
        (logits, logp)
    }
}

impl CausalLm {
    /// Per-token log-probabilities of each response given its prompt: for every
    /// `(prompt, response)`, `log p(response[t] | prompt, response[..t])` for each t. Prompts must
    /// be non-empty (the first response token needs a context).
    pub fn response_logprobs(&self, pairs: &[(Vec<i64>, Vec<i64>)]) -> Result<Vec<Vec<f32>>> {
        self.response_logprobs_in_passes(pairs, crate::batch::SCORING_BATCH_TOKENS)
    }

    /// [`Self::response_logprobs`] in length-sorted passes of at most `max_tokens` padded
    /// tokens each (`crate::batch::length_buckets`).
    pub fn response_logprobs_in_passes(
        &self,
        pairs: &[(Vec<i64>, Vec<i64>)],
        max_tokens: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let vocab = self.cfg.vocab_size;
        for (i, (p, r)) in pairs.iter().enumerate() {
            if p.is_empty() || r.is_empty() {
                return Err(ModelError::InvalidInput(format!(
                    "sequence {i}: prompt and response must both be non-empty"
                )));
            }
            if let Some(t) = p.iter().chain(r).find(|&&t| t < 0 || t >= vocab) {
                return Err(ModelError::InvalidInput(format!(
                    "sequence {i}: token id {t} is outside the vocabulary (size {vocab})"
                )));
            }
        }
        // Many sequences run in length-sorted passes of bounded padding.
        let lengths: Vec<usize> = pairs.iter().map(|(p, r)| p.len() + r.len()).collect();
        crate::batch::by_length_buckets(&lengths, max_tokens, |idx| {
            let seqs: Vec<Vec<i64>> = idx
                .iter()
                .map(|&i| pairs[i].0.iter().chain(&pairs[i].1).copied().collect())
                .collect();
            let batch = Batch::pad(&seqs, 0, crate::batch::PadSide::Right, self.device())?;
            let from = response_window_start(idx.iter().map(|&i| pairs[i].0.len()));
            let rows = crate::batch::rows_f32(&self.token_logprobs_from(&batch, from as i64))?;
            // Row b, shifted position p_len - 1 + t predicts response token t.
            Ok(rows
                .into_iter()
                .zip(idx)
                .map(|(row, &i)| {
                    let (p, r) = &pairs[i];
                    let start = p.len() - 1 - from;
                    row[start..start + r.len()].to_vec()
                })
                .collect())
        })
    }
}

/// Where a batch's log-prob window starts: the last token of its shortest prompt, the first
/// position that predicts a response token (0 for no prompts).
pub fn response_window_start(prompt_lens: impl Iterator<Item = usize>) -> usize {
    prompt_lens.min().map_or(0, |l| l.saturating_sub(1))
}

/// Log-probability of `ids[:, 1:]` under `logits[:, :-1]`, computed in f32.
pub fn shifted_logprobs(logits: &Tensor, ids: &Tensor) -> Tensor {
    let t = logits.size()[1];
    let logp = logits.narrow(1, 0, t - 1).log_softmax(-1, Kind::Float);
    let targets = ids.narrow(1, 1, t - 1).unsqueeze(-1);
    logp.gather(-1, &targets, false).squeeze_dim(-1)
}
