//! All four services in this process on loopback ports ([`rrlhf_embedded::Cluster`]) with the
//! kit's tiny models, and the helpers of a quick PPO run against them.

use std::path::Path;
use std::time::Duration;

use rrlhf_embedded::{Cluster, ModelDirs, Options};
use rrlhf_orchestrator::OrchestratorConfig;
use rrlhf_orchestrator::metrics::{StepMetrics, read_all};
use rrlhf_orchestrator::run::{RunOptions, RunStatus, spawn_run};

use crate::models::models;

/// The kit's models in the roles the cluster serves them in.
pub fn dirs() -> ModelDirs {
    let m = models();
    ModelDirs {
        policy: m.policy.clone(),
        critic: m.stage1.clone(),
        reward: m.brme.clone(),
    }
}

/// One instance of each service, serving.
pub async fn cluster() -> Cluster {
    Cluster::start(&dirs(), &Options::default())
        .await
        .expect("the cluster starts")
}

/// A small, quick run against `cluster`, writing under `out`.
pub fn config(cluster: &Cluster, out: &Path, id: &str, steps: usize) -> OrchestratorConfig {
    let mut cfg = OrchestratorConfig {
        endpoints: cluster.endpoints(None),
        ..OrchestratorConfig::default()
    };
    cfg.run.id = id.into();
    cfg.run.out_dir = out.to_path_buf();
    cfg.run.steps = steps;
    cfg.run.batch_size = 8;
    cfg.run.seed = 3;
    cfg.run.checkpoint_every = 2;
    cfg.sampling.max_new_tokens = 6;
    cfg.ppo.actor.lr = 1e-3;
    cfg.ppo.critic.lr = 1e-3;
    cfg.ppo.actor.minibatch_size = 4;
    cfg.ppo.critic.minibatch_size = 4;
    cfg.retry.initial_ms = 20;
    cfg.retry.max_ms = 300;
    cfg.retry.give_up_secs = 120;
    cfg
}

/// The metrics of run `id` under `out`.
pub fn metrics_of(out: &Path, id: &str) -> Vec<StepMetrics> {
    read_all(&out.join(id).join("metrics.jsonl")).expect("metrics.jsonl")
}

/// Polls `cond` every 20 ms for up to two minutes.
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..6000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Runs `cfg` from scratch and asserts it finished.
pub async fn run_to_the_end(cfg: OrchestratorConfig) {
    run_with(cfg, RunOptions::default()).await;
}

/// Resumes the run of `cfg` from its latest checkpoint and waits until it has finished.
pub async fn resume_to_the_end(cfg: OrchestratorConfig) {
    let options = RunOptions {
        resume: true,
        ..RunOptions::default()
    };
    run_with(cfg, options).await;
}

async fn run_with(cfg: OrchestratorConfig, options: RunOptions) {
    let run = spawn_run(cfg, options).expect("the run starts");
    let status = run.finished().await;
    assert_eq!(status, RunStatus::Finished, "{:?}", run.info().error);
}
