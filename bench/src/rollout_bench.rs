//! `rrlhf-rollout-bench`: rollouts as PPO makes them. The first `--prompts` HH-RLHF prompts of
//! at most `--max-chars` characters (what `rrlhf run` samples from), tokenized with the model's
//! tokenizer, sampled at temperature 1 without top-k/top-p until EOS or `--new-tokens`, on the
//! continuous-batching engine. Prints useful tokens/s (every generated token up to and
//! including EOS) as one JSON object; `--write-prompts` saves the prompt ids for
//! `bench/rollout_peer.py`, which times transformers' `generate` on the same ids.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use rrlhf_model::{CausalLm, Placement, SamplingParams, TextTokenizer, generate};
use serde_json::json;

#[derive(Parser, Debug)]
struct Args {
    /// A causal LM directory with its tokenizer (e.g. `runs/demo/sft` after `make run`).
    #[arg(long)]
    model: PathBuf,
    #[arg(
        long,
        default_value = "../shared/data/hh-rlhf/harmless-base-test.jsonl.gz"
    )]
    data: PathBuf,
    #[arg(long, default_value_t = 128)]
    prompts: usize,
    /// Skip prompts longer than this many characters (`rrlhf run` uses 400).
    #[arg(long, default_value_t = 400)]
    max_chars: usize,
    #[arg(long, default_value_t = 32)]
    new_tokens: usize,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// libtorch intra-op threads.
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// Also write the prompt ids here (a JSON list of lists).
    #[arg(long)]
    write_prompts: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() -> Result<()> {
    let a = Args::parse();
    tch::set_num_threads(a.threads);
    let model = CausalLm::from_dir(&a.model, Placement::default())?;
    let tok = TextTokenizer::load(&a.model).context("the model directory needs its tokenizer")?;
    let prompts: Vec<Vec<i64>> = rrlhf_data::sft::load(&a.data)
        .with_context(|| format!("reading {}", a.data.display()))?
        .examples
        .into_iter()
        .map(|e| e.prompt)
        .filter(|p| !p.trim().is_empty() && p.chars().count() <= a.max_chars)
        .take(a.prompts)
        .map(|p| tok.encode(&p))
        .collect::<rrlhf_model::Result<_>>()?;
    anyhow::ensure!(
        prompts.len() == a.prompts,
        "only {} prompts of at most {} characters in {}",
        prompts.len(),
        a.max_chars,
        a.data.display()
    );
    if let Some(path) = &a.write_prompts {
        std::fs::write(path, serde_json::to_vec(&prompts)?)?;
    }
    let params = SamplingParams {
        temperature: 1.0,
        max_new_tokens: a.new_tokens,
        stop_ids: vec![tok.eos_id],
        seed: Some(a.seed),
        ..Default::default()
    };
    let mut runs = Vec::with_capacity(a.repeats);
    // One warm-up, then the timed repeats.
    for _ in 0..=a.repeats {
        let started = Instant::now();
        let out = generate(&model, &prompts, tok.pad_id, &params, |_| {})?;
        let secs = started.elapsed().as_secs_f64();
        let tokens: usize = out.iter().map(|g| g.tokens.len()).sum();
        runs.push((secs, tokens));
    }
    let mut timed = runs.split_off(1);
    timed.sort_by(|x, y| x.0.total_cmp(&y.0));
    let (secs, tokens) = timed[timed.len() / 2];
    println!(
        "{}",
        json!({
            "impl": "rrlhf",
            "threads": a.threads,
            "prompts": prompts.len(),
            "mean_prompt_tokens": prompts.iter().map(Vec::len).sum::<usize>() as f64
                / prompts.len() as f64,
            "useful_tokens": tokens,
            "secs": secs,
            "tokens_per_s": tokens as f64 / secs,
        })
    );
    Ok(())
}
