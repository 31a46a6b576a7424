//! `rrlhf-bench`: times generation and training throughput of rrlhf's model core on one
//! checkpoint and prints one JSON object. `bench/model_speed.py` runs it next to transformers
//! on the same checkpoint, batch and thread count, and reports the ratio.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use rrlhf_model::losses::masked_mean;
use rrlhf_model::{Batch, CausalLm, PadSide, Placement, SamplingParams, generate};
use serde_json::json;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value_t = 1)]
    threads: i32,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Prompt length for generation.
    #[arg(long, default_value_t = 32)]
    prompt_len: usize,
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Sequence length for forward+backward.
    #[arg(long, default_value_t = 128)]
    train_len: usize,
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Parameter dtype: f32 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Instead of timing: write the f32 logits of `--batch` deterministic rows of
    /// `--train-len` tokens to this safetensors file (key `logits`), for parity checks.
    #[arg(long)]
    logits_out: Option<PathBuf>,
}

/// Median of `repeats` timings of `f` after one warm-up call, in seconds.
fn median_secs(repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Deterministic pseudo-random token ids in `[2, vocab)` (same formula as the Python peer).
fn ids(rows: usize, len: usize, vocab: i64, salt: i64) -> Vec<Vec<i64>> {
    (0..rows as i64)
        .map(|r| {
            (0..len as i64)
                .map(|t| 2 + (r * 7919 + t * 104_729 + salt) % (vocab - 2))
                .collect()
        })
        .collect()
}

fn main() -> Result<()> {
    let a = Args::parse();
    tch::set_num_threads(a.threads);
    let model = CausalLm::from_dir(&a.model, Placement::parse(&a.device, &a.dtype)?)?;
    let vocab = model.cfg.vocab_size;
    if let Some(path) = &a.logits_out {
        let seqs = ids(a.batch, a.train_len, vocab, 3);
        let batch = Batch::pad(&seqs, 0, PadSide::Right, model.device())?;
        let logits = tch::no_grad(|| model.batch_logits(&batch)).to_device(tch::Device::Cpu);
        tch::Tensor::write_safetensors(&[("logits", logits)], path)?;
        return Ok(());
    }

    let prompts = ids(a.batch, a.prompt_len, vocab, 1);
    let params = SamplingParams {
        temperature: 0.0,
        max_new_tokens: a.new_tokens,
        ..Default::default()
    };
    let gen_secs = median_secs(a.repeats, || {
        let out = generate(&model, &prompts, 0, &params, |_| {})?;
        anyhow::ensure!(out.iter().all(|g| g.tokens.len() == a.new_tokens));
        Ok(())
    })?;

    let seqs = ids(a.batch, a.train_len, vocab, 2);
    let batch = Batch::pad(&seqs, 0, PadSide::Right, model.device())?;
    let mask = batch.mask.narrow(1, 1, batch.width() - 1);
    let train_secs = median_secs(a.repeats, || {
        let loss = masked_mean(&model.token_logprobs(&batch), &mask).neg();
        model.vs.trainable_variables().iter().for_each(|v| {
            let mut g = v.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        });
        loss.backward();
        Ok(())
    })?;

    let out = json!({
        "impl": "rrlhf",
        "threads": a.threads,
        "device": a.device,
        "dtype": a.dtype,
        "generate_tokens_per_s": (a.batch * a.new_tokens) as f64 / gen_secs,
        "train_tokens_per_s": (a.batch * a.train_len) as f64 / train_secs,
        "generate_s": gen_secs,
        "train_s": train_secs,
    });
    println!("{out}");
    Ok(())
}
