//! `rrlhf model init|logprobs|generate`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};
use rrlhf_model::{
    Arch, Batch, CausalLm, ModelConfig, PadSide, SamplingParams, SizePreset, TextTokenizer,
};

use crate::args::RuntimeArgs;

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum ArchArg {
    Llama,
    Qwen2,
    Qwen3,
    Mistral,
}

impl From<ArchArg> for Arch {
    fn from(a: ArchArg) -> Self {
        match a {
            ArchArg::Llama => Arch::Llama,
            ArchArg::Qwen2 => Arch::Qwen2,
            ArchArg::Qwen3 => Arch::Qwen3,
            ArchArg::Mistral => Arch::Mistral,
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum SizeArg {
    Tiny,
    Small,
    /// ~125M parameters with a 32k vocabulary (the tokenizer sets the vocabulary).
    Medium,
}

impl SizeArg {
    /// The preset's name in `SizePreset::by_name`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tiny => "tiny",
            Self::Small => "small",
            Self::Medium => "medium",
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Create a randomly initialised model directory (config, weights, tokenizer).
    Init {
        #[arg(long, value_enum)]
        arch: ArchArg,
        #[arg(long, value_enum, default_value = "tiny")]
        size: SizeArg,
        /// tokenizer.json or a directory holding one; sets the vocabulary and special tokens.
        #[arg(long)]
        tokenizer: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 2048)]
        max_positions: i64,
        #[arg(long, default_value_t = 0)]
        seed: i64,
    },
    /// Read JSONL `{"ids":[...]}` on stdin, write `{"logprobs":[...]}`: log p(ids[t] | ids[..t]), t ≥ 1.
    Logprobs {
        #[arg(long)]
        model: PathBuf,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    /// Fold a LoRA adapter (PEFT layout) into its base model and write a plain HF checkpoint.
    Merge {
        /// The base model the adapter was trained on.
        #[arg(long)]
        base: PathBuf,
        /// The adapter directory (adapter_config.json, adapter_model.safetensors).
        #[arg(long)]
        adapter: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    /// Sample continuations of a prompt.
    Generate {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        prompt: String,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// Continuations to sample (in one batch).
        #[arg(long, default_value_t = 1)]
        num_samples: usize,
        /// One JSON object per sample instead of plain text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// No EOS before this many new tokens (its logit is masked out); 0 = off.
    #[arg(long, default_value_t = 0)]
    pub min_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    pub top_k: i64,
    /// 1 = off.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    pub fn params(&self, eos_id: i64) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            max_new_tokens: self.max_new_tokens,
            min_new_tokens: self.min_new_tokens,
            stop_ids: vec![eos_id],
            seed: self.seed,
        }
    }
}

pub fn run(cmd: ModelCommand) -> Result<()> {
    match cmd {
        ModelCommand::Init {
            arch,
            size,
            tokenizer,
            out,
            max_positions,
            seed,
        } => {
            let size_name = size.name();
            let arch = Arch::from(arch);
            let model = init(arch, size_name, &tokenizer, &out, max_positions, seed)?;
            let params: i64 = model
                .vs
                .trainable_variables()
                .iter()
                .map(|t| t.numel() as i64)
                .sum();
            println!(
                "initialised {} {size_name} ({params} parameters) → {}",
                arch.hf_class(),
                out.display()
            );
            Ok(())
        }
        ModelCommand::Logprobs { model, runtime } => logprobs(&model, &runtime),
        ModelCommand::Merge {
            base,
            adapter,
            out,
            runtime,
        } => {
            let mut model = CausalLm::from_dir(&base, runtime.placement()?)
                .with_context(|| format!("loading base model {}", base.display()))?;
            model
                .load_adapter(&adapter)
                .with_context(|| format!("loading adapter {}", adapter.display()))?;
            model.merge_lora();
            model
                .save(&out)
                .with_context(|| format!("saving {}", out.display()))?;
            if let Ok(tok) = TextTokenizer::load(&base) {
                tok.save_to(&out)?;
            }
            println!(
                "merged {} into {} → {}",
                adapter.display(),
                base.display(),
                out.display()
            );
            Ok(())
        }
        ModelCommand::Generate {
            model,
            prompt,
            sampling,
            num_samples,
            json,
            runtime,
        } => {
            let placement = runtime.placement()?;
            let (lm, tok) = load_with_tokenizer(&model, placement)?;
            if num_samples == 0 {
                bail!("--num-samples must be ≥ 1");
            }
            for (prompt_text, text) in sample(&lm, &tok, &[prompt], num_samples, &sampling)? {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"prompt": prompt_text, "completion": text})
                    );
                } else {
                    println!("{text}");
                }
            }
            Ok(())
        }
    }
}

/// Creates and saves a random model sized by `size` for the tokenizer at `tokenizer`.
pub fn init(
    arch: Arch,
    size: &str,
    tokenizer: &Path,
    out: &Path,
    max_positions: i64,
    seed: i64,
) -> Result<CausalLm> {
    let tok = TextTokenizer::load(tokenizer).context("loading the tokenizer")?;
    let preset = SizePreset::by_name(size).with_context(|| format!("unknown size `{size}`"))?;
    let cfg = ModelConfig::new_random_for(arch, &preset, &tok, max_positions);
    tch::manual_seed(seed);
    let model = CausalLm::new(cfg, Default::default())?;
    model
        .save(out)
        .with_context(|| format!("saving {}", out.display()))?;
    tok.save_to(out)?;
    Ok(model)
}

/// Loads a model directory and the tokenizer stored in it.
/// Loads the model in `dir`; a PEFT adapter directory (LoRA SFT output, a LoRA actor's
/// checkpoint) stands for its base with the adapter applied.
pub fn load_model(dir: &Path, placement: rrlhf_model::Placement) -> Result<CausalLm> {
    Ok(load_resolved(dir, placement)?.0)
}

/// [`load_model`], and the directory whose tokenizer goes with it: `dir`, or an adapter
/// directory's base when the adapter carries none.
fn load_resolved(dir: &Path, placement: rrlhf_model::Placement) -> Result<(CausalLm, PathBuf)> {
    if !rrlhf_model::lora::is_adapter_dir(dir) {
        let model = CausalLm::from_dir(dir, placement)
            .with_context(|| format!("loading model {}", dir.display()))?;
        return Ok((model, dir.to_path_buf()));
    }
    let base = rrlhf_model::lora::adapter_base(dir)?;
    let mut model = CausalLm::from_dir(&base, placement)
        .with_context(|| format!("loading base model {} of {}", base.display(), dir.display()))?;
    model
        .load_adapter(dir)
        .with_context(|| format!("loading adapter {}", dir.display()))?;
    let own = dir.join(rrlhf_model::causal_lm::TOKENIZER_FILE).exists();
    Ok((model, if own { dir.to_path_buf() } else { base }))
}

/// [`load_model`] and its tokenizer (an adapter directory's own, else its base's).
pub fn load_with_tokenizer(
    dir: &Path,
    placement: rrlhf_model::Placement,
) -> Result<(CausalLm, TextTokenizer)> {
    let (model, tok_dir) = load_resolved(dir, placement)?;
    let tok = TextTokenizer::load(&tok_dir)
        .with_context(|| format!("model {} has no usable tokenizer", tok_dir.display()))?;
    if tok.vocab_size() as i64 > model.cfg.vocab_size {
        bail!(
            "tokenizer in {} has {} tokens but the model's vocabulary has {}",
            dir.display(),
            tok.vocab_size(),
            model.cfg.vocab_size
        );
    }
    Ok((model, tok))
}

/// `num_samples` continuations of every prompt, as (prompt, decoded completion).
pub fn sample(
    lm: &CausalLm,
    tok: &TextTokenizer,
    prompts: &[String],
    num_samples: usize,
    sampling: &SamplingArgs,
) -> Result<Vec<(String, String)>> {
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids = Vec::new();
    let mut texts = Vec::new();
    for p in prompts {
        let encoded = tok.encode(p)?;
        if encoded.is_empty() {
            bail!("the prompt is empty after tokenisation");
        }
        for _ in 0..num_samples {
            ids.push(encoded.clone());
            texts.push(p.clone());
        }
    }
    let out = rrlhf_model::generate(lm, &ids, tok.pad_id, &sampling.params(tok.eos_id), |_| {})?;
    out.iter()
        .zip(texts)
        .map(|(g, p)| Ok((p, tok.decode(&g.tokens)?)))
        .collect()
}

fn logprobs(dir: &Path, runtime: &RuntimeArgs) -> Result<()> {
    let model = load_model(dir, runtime.placement()?)?;
    let vocab = model.cfg.vocab_size;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for (i, line) in std::io::stdin().lock().lines().enumerate() {
        let n = i + 1;
        let line = line.with_context(|| format!("stdin line {n}: unreadable"))?;
        if line.trim().is_empty() {
            continue;
        }
        let ids = parse_ids(&line, vocab).with_context(|| format!("stdin line {n}"))?;
        let batch = Batch::pad(&[ids], 0, PadSide::Right, model.device())?;
        let lp = {
            let _guard = tch::no_grad_guard();
            model.token_logprobs(&batch)
        };
        let values: Vec<f32> = rrlhf_model::batch::rows_f32(&lp)?.remove(0);
        writeln!(out, "{}", serde_json::json!({ "logprobs": values }))?;
    }
    Ok(())
}

fn parse_ids(line: &str, vocab: i64) -> Result<Vec<i64>> {
    let value: serde_json::Value = serde_json::from_str(line).context("invalid JSON")?;
    let ids = value
        .get("ids")
        .and_then(|v| v.as_array())
        .context("expected an object with an `ids` array")?;
    let ids: Vec<i64> = ids
        .iter()
        .map(|v| {
            v.as_i64()
                .with_context(|| format!("`ids` holds {v}, not an integer"))
        })
        .collect::<Result<_>>()?;
    if ids.is_empty() {
        bail!("`ids` is empty");
    }
    if let Some(bad) = ids.iter().find(|&&t| t < 0 || t >= vocab) {
        bail!("token id {bad} is outside the vocabulary (size {vocab})");
    }
    Ok(ids)
}
