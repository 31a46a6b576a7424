//! One PPO run on the four services started in this process (real gRPC on loopback ports):
//! what `rrlhf run` and `rrlhf experiment overopt` share. The run resumes from its latest
//! checkpoint when one exists.

use std::path::Path;

use anyhow::Result;
use rrlhf_embedded::{Cluster, ModelDirs, Options};

use crate::args::RuntimeArgs;
use rrlhf_orchestrator::OrchestratorConfig;
use rrlhf_orchestrator::run::{GoldReward, RunInfo, RunOptions, RunStatus, spawn_run};
use rrlhf_orchestrator::sources::{CalibrationSetting, RewardSource};

/// The models of a run: the SFT policy (actor and reference), the stage-1 RM (critic), the BRME.
pub fn model_dirs(sft: &Path, stage1: &Path, brme: &Path) -> ModelDirs {
    ModelDirs {
        policy: sft.to_path_buf(),
        critic: stage1.to_path_buf(),
        reward: brme.to_path_buf(),
    }
}

/// Services on the runtime's device and dtype for sequences of up to `max_length` tokens.
/// Without `merge_requests` each request is its own batch, so runs reproduce bit for bit.
/// Each engine gets `--threads` intra-op threads. The default, 0, gives every engine one per
/// core, with libgomp's default idle policy (spin briefly, then sleep): on the 2-core machine
/// the fastest PPO step of the settings `bench/thread_budget.sh` measures (9.5 s, against
/// 11.8 s with one thread per engine and 14.5 s with spinning idle workers).
pub fn options(max_length: usize, runtime: &RuntimeArgs, merge_requests: bool) -> Options {
    Options {
        max_length,
        device: runtime.device.clone(),
        dtype: runtime.dtype.clone(),
        shutdown_grace_secs: 1.0,
        merge_requests,
        threads: runtime.threads,
        ..Options::default()
    }
}

/// A further reward model to serve and fuse with the main one (heterologous fusion): its
/// source name, directory and calibration on a shared reference set.
pub struct ExtraReward {
    pub name: String,
    pub model: std::path::PathBuf,
    pub calibration: Option<CalibrationSetting>,
}

/// Starts the services (and a reward service per `extra` source), runs `cfg` to the end
/// (serving the REST API on `rest` meanwhile, when given), stops the services; fails unless
/// the run finished or was stopped on request (then its last checkpoint stands for it;
/// `RunInfo::status` says which). The config's reward-source settings (names, calibrations, extra sources)
/// are kept; its service addresses become the embedded ones.
pub fn run(
    mut cfg: OrchestratorConfig,
    dirs: &ModelDirs,
    opts: &Options,
    gold: Option<GoldReward>,
    rest: Option<&str>,
    extra: &[ExtraReward],
) -> Result<RunInfo> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let cluster = Cluster::start(dirs, opts).await?;
        let configured = std::mem::take(&mut cfg.endpoints);
        cfg.endpoints = cluster.endpoints(None);
        cfg.endpoints.reward_name = configured.reward_name;
        cfg.endpoints.reward_calibration = configured.reward_calibration;
        cfg.endpoints.extra_rewards = configured.extra_rewards;
        let mut extra_services = Vec::new();
        for e in extra {
            let cfg_e = rrlhf_embedded::reward_config(&e.model, "127.0.0.1:0", opts);
            let service = rrlhf_embedded::start_reward(cfg_e).await?;
            cfg.endpoints.extra_rewards.push(RewardSource {
                name: e.name.clone(),
                urls: vec![service.url()],
                calibration: e.calibration,
            });
            extra_services.push(service);
        }
        // The REST API's base: runs it creates, and its readiness, use these services.
        let base = cfg.clone();
        let run = spawn_run(
            cfg,
            RunOptions {
                resume: true,
                print_progress: true,
                gold,
                pause_on_bad_batch: rest.is_some(),
            },
        )?;
        if let Some(addr) = rest {
            let api = rrlhf_orchestrator::rest::Api::new(base)?;
            api.adopt(run.clone());
            let (local, _task) =
                rrlhf_orchestrator::rest::serve(addr, api, std::future::pending()).await?;
            eprintln!("      REST control API on http://{local} · dashboard: http://{local}/");
        }
        let status = run.finished().await;
        cluster.stop().await;
        for service in extra_services {
            service.stop().await;
        }
        let info = run.info();
        match status {
            RunStatus::Finished => {}
            // A stop asked for through the REST API or the dashboard is the user's decision,
            // not a failure: the run ended with a checkpoint of where it stood, and what
            // follows (evaluation, samples) works from that.
            RunStatus::Stopped => eprintln!(
                "      PPO run {} stopped on request after {} of {} steps; going on with its last checkpoint",
                info.id, info.step, info.steps
            ),
            _ => anyhow::bail!(
                "PPO run {} {status:?}: {}",
                info.id,
                info.error.clone().unwrap_or_else(|| "no reason recorded".into())
            ),
        }
        Ok(info)
    })
}
