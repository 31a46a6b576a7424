//! Tiny models built once per test binary — a policy with its tokenizer, a stage-1 reward model
//! for the critic, a 3-head BRME with spread-out heads — and helpers to run the orchestrator
//! against a [`Cluster`] of real services.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use rrlhf_embedded::{Cluster, ModelDirs, Options};
use rrlhf_model::reward_model::{RewardMeta, RewardModel};
use rrlhf_model::tokenizer::train_bpe;
use rrlhf_model::{Arch, CausalLm, ModelConfig, Placement, SizePreset};
use rrlhf_orchestrator::OrchestratorConfig;
use rrlhf_orchestrator::metrics::{StepMetrics, read_all};

pub struct Models {
    _root: tempfile::TempDir,
    pub dirs: ModelDirs,
}

pub fn models() -> &'static Models {
    static M: OnceLock<Models> = OnceLock::new();
    M.get_or_init(|| {
        tch::set_num_threads(1);
        let root = tempfile::tempdir().unwrap();
        let policy = root.path().join("policy");
        let texts = rrlhf_orchestrator::prompts::synthetic()
            .into_iter()
            .map(|p| format!("{p} Here is a short answer about it."));
        let tok = train_bpe(texts, 300, &policy).unwrap();
        let preset = SizePreset::by_name("tiny").unwrap();
        let cfg = ModelConfig::new_random(
            Arch::Llama,
            &preset,
            tok.vocab_size() as i64,
            None,
            tok.eos_id,
            Some(tok.pad_id),
            512,
        );
        CausalLm::new(cfg, Placement::default())
            .unwrap()
            .save(&policy)
            .unwrap();
        let save_rm = |meta: RewardMeta, name: &str, spread: bool| -> PathBuf {
            let rm = RewardModel::from_base(&policy, meta, Placement::default()).unwrap();
            if spread {
                let _guard = tch::no_grad_guard();
                for (n, mut var) in rm.vs.variables() {
                    if n.starts_with("brme.") {
                        var.copy_(
                            &(tch::Tensor::randn(var.size(), (tch::Kind::Float, tch::Device::Cpu))
                                * 0.5),
                        );
                    }
                }
            }
            let dir = root.path().join(name);
            rm.save(&dir).unwrap();
            tok.save_to(&dir).unwrap();
            dir
        };
        let critic = save_rm(RewardMeta::bradley_terry(None), "rm-stage1", false);
        let reward = save_rm(RewardMeta::brme(3, 2.0, None).unwrap(), "brme", true);
        Models {
            _root: root,
            dirs: ModelDirs {
                policy,
                critic,
                reward,
            },
        }
    })
}

pub async fn cluster() -> Cluster {
    Cluster::start(&models().dirs, &Options::default())
        .await
        .unwrap()
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

pub fn metrics_of(out: &Path, id: &str) -> Vec<StepMetrics> {
    read_all(&out.join(id).join("metrics.jsonl")).unwrap()
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
    let run = rrlhf_orchestrator::run::spawn_run(cfg, Default::default()).unwrap();
    let status = run.finished().await;
    assert_eq!(
        status,
        rrlhf_orchestrator::run::RunStatus::Finished,
        "{:?}",
        run.info().error
    );
}
