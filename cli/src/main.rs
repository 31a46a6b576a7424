//! `rrlhf`: the command line of the reward-robust RLHF stack.
//!
//! Every failure ends in one line on stderr naming what is wrong, and a non-zero exit code.

mod args;
mod cmd_experiment;
mod cmd_launch;
mod cmd_model;
mod cmd_orchestrate;
mod cmd_rm;
mod cmd_run;
mod cmd_serve;
mod cmd_sft;
mod cmd_tokenizer;
mod cmd_toy;
mod embedded_ppo;
mod overopt_proxy;
mod run_summary;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "rrlhf",
    version,
    about = "Reward-robust RLHF: PPO against a Bayesian reward-model ensemble"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The main job on the embedded default: tokenizer → model → SFT → BRME → reward-robust PPO
    /// over the four services on loopback.
    Run(cmd_run::RunArgs),
    /// Reward-robust PPO against services started elsewhere, with the REST control API.
    Orchestrate(cmd_orchestrate::OrchestrateArgs),
    /// Start, supervise and stop one node's service processes (ranks, replicas) from a plan.
    Launch(cmd_launch::LaunchArgs),
    /// Create, inspect and run models (Hugging Face directories).
    #[command(subcommand)]
    Model(cmd_model::ModelCommand),
    /// Train tokenizers.
    #[command(subcommand)]
    Tokenizer(cmd_tokenizer::TokenizerCommand),
    /// Supervised fine-tuning of a causal LM on prompt/response data.
    Sft(cmd_sft::SftArgs),
    /// Run a gRPC service.
    #[command(subcommand)]
    Serve(cmd_serve::ServeCommand),
    /// Score a (prompt, response) with a running reward service.
    Score(cmd_serve::ScoreArgs),
    /// The paper's toy model (§4): standard vs reward-robust RLHF on an 8 × 8 bandit, many seeds.
    Toy(cmd_toy::ToyArgs),
    /// The paper's experiments on a gold-reward testbed (`overopt`: the λ sweep).
    #[command(subcommand)]
    Experiment(cmd_experiment::ExperimentCommand),
    /// Reward models: two-stage training (Bradley–Terry → BRME), evaluation, calibration.
    #[command(subcommand)]
    Rm(cmd_rm::RmCommand),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => cmd_run::run(a),
        Command::Orchestrate(a) => cmd_orchestrate::run(a),
        Command::Launch(a) => cmd_launch::run(a),
        Command::Model(c) => cmd_model::run(c),
        Command::Tokenizer(c) => cmd_tokenizer::run(c),
        Command::Sft(a) => cmd_sft::run(a),
        Command::Rm(c) => cmd_rm::run(c),
        Command::Toy(a) => cmd_toy::run(a),
        Command::Experiment(c) => cmd_experiment::run(c),
        Command::Serve(c) => cmd_serve::run(c),
        Command::Score(a) => cmd_serve::score(a),
    };
    if let Err(e) = result {
        // `{:#}` joins the context chain into one line: "reading x: file not found".
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
