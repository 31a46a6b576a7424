//! `rrlhf run`: the main job on the embedded default, in one process.
//!
//! Today it is the longest pipeline the stack has: train a BPE tokenizer on the HH-RLHF data,
//! initialise a model, fine-tune it on the chosen dialogues, train the two-stage reward model
//! (Bradley–Terry, then a K-head BRME), evaluate it on held-out pairs, and sample replies to
//! held-out prompts that the BRME scores with the robust objective. It grows into the full
//! reward-robust PPO run as the services and orchestrator land.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use rrlhf_model::Arch;
use serde_json::json;

use crate::args::RuntimeArgs;
use crate::cmd_model::{ArchArg, SamplingArgs, SizeArg, init, load_with_tokenizer, sample};
use crate::cmd_rm::{DataArgs, EvalArgs, ScoringArgs, SplitArg, StageArg, TrainArgs};
use crate::cmd_sft::{SftArgs, sft, write_json};
use rrlhf_model::TextTokenizer;
use rrlhf_model::reward_model::RewardModel;
use rrlhf_model::scoring::{Overlong, RewardScorer};
use rrlhf_robust::{Strategy, UncertaintySet};

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
    /// Optimiser steps of each reward-model stage.
    #[arg(long, default_value_t = 150)]
    rm_steps: usize,
    /// BRME heads K.
    #[arg(long, default_value_t = 5)]
    heads: i64,
    /// λ of the robust objective used to score the sample replies.
    #[arg(long, default_value_t = 0.4)]
    lambda: f32,
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
        "[1/7] tokenizer: byte-level BPE ({} tokens) on {}",
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
    eprintln!("[2/7] model: random {} {size_name}", arch.hf_class());
    let model = init(arch, size_name, &tok_dir, &init_dir, 2048, a.seed as i64)?;
    let params: usize = model
        .vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel())
        .sum();
    drop(model);

    eprintln!(
        "[3/7] sft: {} steps × {} examples on the chosen dialogues",
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

    let (rm1_dir, brme_dir) = (a.out.join("rm-stage1"), a.out.join("rm-brme"));
    let rm_args = |stage, base: &std::path::Path, out: &std::path::Path| TrainArgs {
        stage,
        base: base.to_path_buf(),
        data: DataArgs {
            data: a.data.clone(),
            min_rating_gap: 2.0,
            skip_malformed: false,
        },
        out: out.to_path_buf(),
        steps: Some(a.rm_steps),
        epochs: 1.0,
        lr: 5e-4,
        batch_size: 16,
        max_len: a.max_len,
        eval_fraction: 0.1,
        eval_every: 50,
        seed: a.seed,
        heads: a.heads,
        alpha: 2.0,
        runtime: a.runtime.clone(),
    };
    eprintln!(
        "[4/7] reward model stage 1: Bradley–Terry on the SFT backbone, {} steps",
        a.rm_steps
    );
    let rm1 = crate::cmd_rm::train(&rm_args(StageArg::One, &sft_dir, &rm1_dir), true)?;
    eprintln!(
        "[5/7] reward model stage 2: BRME with K = {} heads, {} steps",
        a.heads, a.rm_steps
    );
    let brme = crate::cmd_rm::train(&rm_args(StageArg::Two, &rm1_dir, &brme_dir), true)?;
    eprintln!("[6/7] reward model evaluation on the held-out pairs");
    let report = crate::cmd_rm::eval(&EvalArgs {
        model: brme_dir.clone(),
        data: DataArgs {
            data: a.data.clone(),
            min_rating_gap: 2.0,
            skip_malformed: false,
        },
        split: SplitArg::HeldOut,
        baseline: None,
        plots: Some(a.out.join("rm-plots")),
        json: false,
        scoring: ScoringArgs {
            batch_size: 32,
            max_len: a.max_len,
            runtime: a.runtime.clone(),
        },
    })?;

    eprintln!(
        "[7/7] samples: replies to {} held-out prompts, scored by the BRME",
        a.samples
    );
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
    drop(lm);
    let scorer = RewardScorer {
        model: RewardModel::from_dir(&brme_dir, a.runtime.placement()?)?,
        tokenizer: TextTokenizer::load(&brme_dir)?,
        max_len: a.max_len,
        batch_size: 8,
        overlong: Overlong::Truncate,
    };
    let strategy = Strategy::Tradeoff { lambda: a.lambda };
    let scored = scorer.score(&replies, strategy, UncertaintySet::Mean, a.seed)?;

    let summary = json!({
        "data": a.data,
        "tokenizer": {"vocab_size": tok.vocab_size(), "dir": tok_dir},
        "model": {"arch": arch.hf_class(), "size": size_name, "parameters": params},
        "sft": outcome,
        "reward_model": {"stage1": rm1, "brme": brme, "eval": report},
        "samples": replies.iter().zip(&scored).map(|((p, r), s)| json!({
            "prompt": p, "reply": r, "heads_mu": s.heads.mu, "heads_sigma": s.heads.sigma,
            "summary": s.aggregated.summary, "reward": s.aggregated.reward, "strategy": strategy,
        })).collect::<Vec<_>>(),
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
    let pct = |k: &str| report.accuracy.get(k).map_or(f64::NAN, |x| x * 100.0);
    println!(
        "reward model {} held-out pairs: accuracy stage-1 {:.1}%, BRME nominal {:.1}%, mean {:.1}%, min {:.1}%",
        report.pairs,
        pct("stage1"),
        pct("nominal"),
        pct("mean"),
        pct("min")
    );
    for ((p, r), s) in replies.iter().zip(&scored) {
        let last_turn = p.rsplit("Human:").next().unwrap_or(p).trim();
        let question = last_turn.trim_end_matches("Assistant:").trim();
        let sum = s.aggregated.summary;
        println!("\nHuman: {question}\nAssistant:{r}");
        println!(
            "  reward: nominal {:+.3} (head {}), min {:+.3}, {strategy} → {:+.3}",
            sum.nominal, sum.nominal_head, sum.min, s.aggregated.reward
        );
    }
    println!("\nwritten: {}", a.out.join("summary.json").display());
    Ok(())
}
