//! PPO with a LoRA actor and no reference service: the orchestrator takes the reference
//! log-probs from the actor's frozen base (`endpoints.reference_from_actor_base`), the run
//! finishes, the policy moves away from its base (KL > 0), the checkpoint holds a PEFT adapter
//! instead of a copy of the model, and the run resumes from it.

use rrlhf_embedded::{Cluster, Options};
use rrlhf_model::LoraConfig;
use rrlhf_testkit::cluster::{config, dirs, metrics_of, resume_to_the_end, run_to_the_end};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lora_ppo_runs_with_the_actor_base_as_the_reference() {
    let out = tempfile::tempdir().unwrap();
    let options = Options {
        actor_lora: Some(LoraConfig::new(8, 16.0, &["q_proj", "v_proj", "up_proj"])),
        ..Options::default()
    };
    let cluster = Cluster::start(&dirs(), &options)
        .await
        .expect("the cluster starts");
    assert!(cluster.reference.is_none(), "no reference service");
    let mut cfg = config(&cluster, out.path(), "lora", 2);
    assert!(cfg.endpoints.reference.is_empty() && cfg.endpoints.reference_from_actor_base);
    cfg.ppo.actor.lr = 1e-2;
    run_to_the_end(cfg).await;
    let m = metrics_of(out.path(), "lora");
    assert_eq!(m.len(), 2);
    assert!(
        m.iter()
            .all(|s| s.kl.is_finite() && s.train.policy_loss.is_finite())
    );
    assert!(
        m[1].kl.abs() > 0.0,
        "the adapters moved the policy off its base"
    );
    let latest = std::fs::read_dir(out.path().join("lora/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("actor/adapter_model.safetensors").exists());
    let actor = latest
        .expect("a checkpoint with the actor's adapter")
        .join("actor");
    assert!(
        !actor.join("model.safetensors").exists(),
        "no copy of the base"
    );

    // The run resumes from that checkpoint: the actor loads its adapter back.
    let mut cfg = config(&cluster, out.path(), "lora", 3);
    cfg.ppo.actor.lr = 1e-2;
    resume_to_the_end(cfg).await;
    let steps: Vec<usize> = metrics_of(out.path(), "lora")
        .iter()
        .map(|m| m.step)
        .collect();
    assert_eq!(steps, vec![1, 2, 3], "resumed after step 2");
    cluster.stop().await;
}
