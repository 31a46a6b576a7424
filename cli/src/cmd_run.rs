//! `rrlhf run`: the main job on the embedded default, in one process.
//!
//! Today it is the longest pipeline the stack has: train a BPE tokenizer on the HH-RLHF data,
//! initialise a model, fine-tune it on the chosen dialogues, sample replies to held-out prompts
//! and write a summary. It grows into the full reward-robust PPO run as the reward model,
//! services and orchestrator land.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use rrlhf_model::Arch;
use serde_json::json;

use crate::args::RuntimeArgs;
use crate::cmd_model::{ArchArg, SamplingArgs, SizeArg, init, load_with_tokenizer, sample};
use crate::cmd_sft::{SftArgs, sft, write_json};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Preference data (HH-RLHF JSONL(.gz)).
    #[arg(
        long,
        default_value = "../shared/data/hh-rlhf/harmless-base-test.jsonl.gz"
    )]
    data: PathBuf,
    /// Run directory; every stage writes a sub-directory.
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "llama")]
    arch: ArchArg,
    #[arg(long, value_enum, default_value = "tiny")]
    size: SizeArg,
    #[arg(long, default_value_t = 2048)]
    vocab_size: usize,
    #[arg(long, default_value_t = 600)]
    sft_steps: usize,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    #[arg(long, default_value_t = 192)]
    max_len: usize,
    /// Held-out prompts to answer at the end.
    #[arg(long, default_value_t = 3)]
    samples: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub fn run(a: RunArgs) -> Result<()> {
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let (tok_dir, init_dir, sft_dir) = (
        a.out.join("tokenizer"),
        a.out.join("init"),
        a.out.join("sft"),
    );

    eprintln!(
        "[1/4] tokenizer: byte-level BPE ({} tokens) on {}",
        a.vocab_size,
        a.data.display()
    );
    let tok = crate::cmd_tokenizer::train(&a.data, a.vocab_size, &tok_dir)?;

    let (arch, size) = match (a.arch, a.size) {
        (ArchArg::Llama, s) => (Arch::Llama, s),
        (ArchArg::Qwen2, s) => (Arch::Qwen2, s),
    };
    let size_name = match size {
        SizeArg::Tiny => "tiny",
        SizeArg::Small => "small",
    };
    eprintln!("[2/4] model: random {} {size_name}", arch.hf_class());
    let model = init(arch, size_name, &tok_dir, &init_dir, 2048, a.seed as i64)?;
    let params: usize = model
        .vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel())
        .sum();
    drop(model);

    eprintln!(
        "[3/4] sft: {} steps × {} examples on the chosen dialogues",
        a.sft_steps, a.batch_size
    );
    let sft_args = SftArgs {
        model: init_dir.clone(),
        data: a.data.clone(),
        out: sft_dir.clone(),
        steps: a.sft_steps,
        batch_size: a.batch_size,
        lr: a.lr,
        warmup_steps: a.sft_steps / 10,
        max_len: a.max_len,
        grad_clip: 1.0,
        eval_fraction: 0.05,
        eval_every: 0,
        seed: a.seed,
        runtime: a.runtime.clone(),
    };
    let outcome = sft(&sft_args, true)?;

    eprintln!("[4/4] samples: replies to {} held-out prompts", a.samples);
    let (lm, tok2) = load_with_tokenizer(&sft_dir, a.runtime.placement()?)?;
    let data = rrlhf_data::sft::load(&a.data)?;
    let (_, held_out) = rrlhf_data::split::train_test(data.examples, a.seed, 0.05);
    let prompts: Vec<String> = held_out
        .iter()
        .map(|e| e.prompt.clone())
        .filter(|p| p.len() < 400)
        .take(a.samples)
        .collect();
    let sampling = SamplingArgs {
        max_new_tokens: 48,
        temperature: 0.7,
        top_k: 50,
        top_p: 0.95,
        seed: Some(a.seed),
    };
    let replies = sample(&lm, &tok2, &prompts, 1, &sampling)?;

    let summary = json!({
        "data": a.data,
        "tokenizer": {"vocab_size": tok.vocab_size(), "dir": tok_dir},
        "model": {"arch": arch.hf_class(), "size": size_name, "parameters": params},
        "sft": outcome,
        "samples": replies.iter().map(|(p, r)| json!({"prompt": p, "reply": r})).collect::<Vec<_>>(),
    });
    write_json(&a.out.join("summary.json"), &summary)?;

    println!("\n== rrlhf run: summary ==");
    println!(
        "model        {} {size_name}, {params} parameters, vocab {}",
        arch.hf_class(),
        tok.vocab_size()
    );
    println!(
        "sft          {} steps, {} train / {} held-out dialogues, {:.0}s",
        outcome.steps, outcome.train_examples, outcome.eval_examples, outcome.seconds
    );
    println!(
        "held-out NLL {:.3} → {:.3} nats/token (perplexity {:.0} → {:.0})",
        outcome.initial_eval_loss,
        outcome.final_eval_loss,
        outcome.initial_eval_loss.exp(),
        outcome.final_eval_loss.exp()
    );
    for (p, r) in &replies {
        let last_turn = p.rsplit("Human:").next().unwrap_or(p).trim();
        let question = last_turn.trim_end_matches("Assistant:").trim();
        println!("\nHuman: {question}\nAssistant:{r}");
    }
    println!("\nwritten: {}", a.out.join("summary.json").display());
    Ok(())
}
