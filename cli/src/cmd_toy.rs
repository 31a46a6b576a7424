//! `rrlhf toy`: the paper's toy model (§4, Fig. 1) over many paired seeds — standard RLHF
//! against the reward-robust mix for several λ, the ensemble mean and UWO, over a deep ensemble
//! of independent RMs and over one multi-head RM with a shared trunk.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use rrlhf_robust::Lambda;
use rrlhf_toy::bandit::PpoSettings;
use rrlhf_toy::experiment::ToyConfig;
use rrlhf_toy::reward::{HeadData, RmArch};

#[derive(Args, Debug)]
pub struct ToyArgs {
    /// Seeds (paired: every condition of a seed shares data, RMs, policy init and sampling).
    #[arg(long, default_value_t = 50)]
    seeds: usize,
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// RM input: `joint` (prompt ⊕ response one-hots → 1 score) or `per-prompt` (prompt → 8 scores).
    #[arg(long, default_value = "per-prompt")]
    rm_arch: RmArch,
    /// Rejected responses per prompt in the preference data (data coverage).
    #[arg(long, default_value_t = 2)]
    pairs_per_prompt: usize,
    /// RMs from other seeds in the uncertainty set besides the nominal one.
    #[arg(long, default_value_t = 3)]
    extra_rms: usize,
    #[arg(long, default_value_t = 300)]
    rm_steps: usize,
    /// Aggregate raw RM scores instead of standardised ones.
    #[arg(long)]
    no_standardize: bool,
    /// λ values of the robust conditions (λ = 1, standard RLHF, always runs).
    #[arg(long, value_delimiter = ',', default_value = "0,0.2,0.4,0.6,0.8")]
    lambdas: Vec<Lambda>,
    /// c values of the UWO conditions `mean − c·variance` over the members (Coste et al. 2023).
    #[arg(long, value_delimiter = ',', default_value = "0.5,2")]
    uwo_c: Vec<f32>,
    /// The multi-head RM (1 + extra-rms heads on a shared trunk): `all` (every head on every
    /// pair), `partition` (each head on its own share of the pairs, as BRME) or `off`.
    #[arg(long, default_value = "all")]
    multi_head: HeadData,
    /// PPO iterations.
    #[arg(long, default_value_t = 100)]
    ppo_iters: usize,
    /// KL coefficient β.
    #[arg(long, default_value_t = 0.05)]
    beta: f64,
    #[arg(long, default_value_t = 32)]
    samples_per_prompt: usize,
    /// Where toy.json, toy.md and the heatmaps go.
    #[arg(long, default_value = "runs/toy")]
    out: PathBuf,
    /// Print the result as JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: ToyArgs) -> Result<()> {
    let cfg = ToyConfig {
        seeds: a.seeds,
        first_seed: a.first_seed,
        rm_arch: a.rm_arch,
        pairs_per_prompt: a.pairs_per_prompt,
        extra_rms: a.extra_rms,
        rm_steps: a.rm_steps,
        standardize: !a.no_standardize,
        lambdas: a.lambdas,
        uwo_cs: a.uwo_c,
        multi_head: a.multi_head,
        ppo: PpoSettings {
            iterations: a.ppo_iters,
            beta: a.beta,
            samples_per_prompt: a.samples_per_prompt,
            ..PpoSettings::default()
        },
        ..ToyConfig::default()
    };
    let bar = indicatif::ProgressBar::new(cfg.seeds as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("toy {bar:30} {pos}/{len} seeds {elapsed}")
            .expect("static template"),
    );
    let result = rrlhf_toy::run(&cfg, |done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    rrlhf_toy::report::write(&a.out, &result)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print!("{}", rrlhf_toy::report::markdown(&result));
        println!(
            "\nwritten: {}/toy.json, toy.md, toy-rms.png, toy-heads.png, toy-actors.png",
            a.out.display()
        );
    }
    Ok(())
}
