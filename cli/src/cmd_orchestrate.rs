//! `rrlhf orchestrate`: reward-robust PPO against services started elsewhere, with the REST
//! control API. By default it starts the run its config describes and exits when that run
//! ends; `--api-only` serves the API alone (runs are created with `POST /v1/runs`).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use rrlhf_orchestrator::OrchestratorConfig;
use rrlhf_orchestrator::rest::{Api, serve};
use rrlhf_orchestrator::run::{RunOptions, RunStatus, spawn_run};
use rrlhf_robust::Strategy;
use serde_json::{Map, Value, json};

#[derive(Args, Debug)]
pub struct OrchestrateArgs {
    /// TOML config (sections endpoints, run, prompts, sampling, objective, ppo, retry, rest).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run id (overrides `run.id`).
    #[arg(long)]
    run_id: Option<String>,
    /// PPO steps (overrides `run.steps`).
    #[arg(long)]
    steps: Option<usize>,
    /// Aggregation strategy, e.g. `tradeoff:0.4` (overrides `objective.strategy`).
    #[arg(long)]
    strategy: Option<Strategy>,
    /// Continue the run from its latest checkpoint.
    #[arg(long)]
    resume: bool,
    /// Serve the REST API only; start runs through it.
    #[arg(long)]
    api_only: bool,
}

impl OrchestrateArgs {
    fn overrides(&self) -> Value {
        let mut run = Map::new();
        if let Some(id) = &self.run_id {
            run.insert("id".into(), json!(id));
        }
        if let Some(s) = self.steps {
            run.insert("steps".into(), json!(s));
        }
        let mut root = Map::new();
        if !run.is_empty() {
            root.insert("run".into(), Value::Object(run));
        }
        if let Some(s) = &self.strategy {
            root.insert("objective".into(), json!({ "strategy": s }));
        }
        Value::Object(root)
    }
}

pub fn run(a: OrchestrateArgs) -> Result<()> {
    let cfg: OrchestratorConfig = rrlhf_runtime::load_config(a.config.as_deref(), &a.overrides())?;
    cfg.validate()?;
    let rt = tokio::runtime::Runtime::new()?;
    // The OTLP exporter needs the runtime.
    let _telemetry = {
        let _rt = rt.enter();
        rrlhf_runtime::telemetry::init(&cfg.telemetry.as_server_config()?, "rrlhf-orchestrator")?
    };
    rt.block_on(async move {
        let api = Api::new(cfg.clone())?;
        if let Some(addr) = &cfg.rest.addr {
            let (local, _task) = serve(
                addr,
                api.clone(),
                rrlhf_runtime::server::termination_signal(),
            )
            .await?;
            let scheme = if cfg.rest.tls_cert.is_some() { "https" } else { "http" };
            eprintln!(
                "REST control API on {scheme}://{local} (OpenAPI: /v1/openapi.json) · dashboard: {scheme}://{local}/"
            );
        } else if a.api_only {
            bail!("rest.addr: --api-only needs an address to serve on");
        }
        // Runs of an earlier orchestrator: listed again, and continued if it was driving them.
        // (Only with the REST API: without it nothing could control them.)
        if cfg.rest.addr.is_some() {
            for id in api.restore()? {
                eprintln!("resumed interrupted run {id}");
            }
        }
        if a.api_only {
            rrlhf_runtime::server::termination_signal().await;
            return Ok(());
        }
        let live = api
            .runs
            .lock()
            .expect("runs lock")
            .get(&cfg.run.id)
            .cloned();
        let handle = match live {
            // This orchestrator's own run, interrupted and resumed by `restore` just now.
            Some(h) => h,
            None => {
                let resumable = cfg.rest.addr.is_some();
                let h = spawn_run(
                    cfg,
                    RunOptions {
                        resume: a.resume,
                        print_progress: true,
                        gold: None,
                        pause_on_bad_batch: resumable,
                    },
                )?;
                api.adopt(h.clone());
                h
            }
        };
        let status = handle.finished().await;
        let info = handle.info();
        eprintln!(
            "run {} {status:?} after {} steps: {}",
            info.id,
            info.step,
            info.dir.display()
        );
        match status {
            RunStatus::Failed => {
                bail!("run {} failed: {}", info.id, info.error.unwrap_or_default())
            }
            _ => Ok(()),
        }
    })
}
