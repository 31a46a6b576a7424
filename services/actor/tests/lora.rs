//! A LoRA actor: PPO updates train the adapters only — the loss falls, the base weights stay
//! bit-identical, the optimizer holds state for adapters alone — and a checkpoint is a PEFT
//! adapter (no copy of the base) that a fresh LoRA actor loads to the same log-probabilities.

use rrlhf_actor_service::engine::{Policy, PpoJob};
use rrlhf_model::{LoraConfig, Placement};
use rrlhf_runtime::training_rpc::Trainable;
use rrlhf_testkit::models::models;
use rrlhf_train::data_parallel::UpdatePlan;
use tch::Tensor;

fn lora() -> LoraConfig {
    LoraConfig::new(4, 8.0, &["q_proj", "v_proj", "down_proj"])
}

/// Copies of the base (non-adapter) parameters, by name.
fn base_weights(policy: &Policy) -> Vec<(String, Tensor)> {
    let mut out: Vec<(String, Tensor)> = policy
        .model
        .vs
        .variables()
        .into_iter()
        .filter(|(name, _)| !name.contains(".lora_"))
        .map(|(name, t)| (name, t.copy()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn job(policy: &Policy) -> PpoJob {
    let pairs = vec![
        (vec![5i64, 17, 33], vec![40i64, 41, 42, 9]),
        (vec![8, 2], vec![19, 6, 30]),
    ];
    let old_logprobs = policy.logprobs(&pairs).unwrap();
    let advantages = pairs.iter().map(|(_, r)| vec![1.0f32; r.len()]).collect();
    PpoJob {
        pairs,
        old_logprobs,
        advantages,
        clip_eps: 0.2,
        entropy_coef: 0.0,
        plan: UpdatePlan {
            minibatch_size: 0,
            micro_batch_size: 0,
            epochs: 6,
            seed: 0,
            lr: 1e-2,
            max_grad_norm: 1.0,
        },
    }
}

#[test]
fn lora_ppo_trains_the_adapters_only_and_checkpoints_them() {
    tch::set_num_threads(1);
    let base = &models().policy;
    let policy = Policy::load(base, Placement::default(), 0.0, Some(&lora()), None).unwrap();
    let base_before = base_weights(&policy);
    let job = job(&policy);
    let before: f32 = job.old_logprobs.iter().flatten().sum();
    let stats = policy.ppo_update(&job).unwrap();
    assert_eq!(stats.summary.updates, 6);
    assert!(
        stats.summary.loss_last < stats.summary.loss_first,
        "{:?}",
        stats.summary
    );
    let after: f32 = policy.logprobs(&job.pairs).unwrap().iter().flatten().sum();
    assert!(
        after > before,
        "positive advantages raise the log-probs: {before} → {after}"
    );
    for ((name, now), (_, before)) in base_weights(&policy).iter().zip(&base_before) {
        assert!(now.equal(before), "the base is frozen, but {name} moved");
    }

    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    policy.save(&ckpt).unwrap();
    assert!(ckpt.join("adapter_model.safetensors").exists());
    assert!(
        !ckpt.join("model.safetensors").exists(),
        "no copy of the base"
    );
    let state = Tensor::read_safetensors(ckpt.join("optimizer.safetensors")).unwrap();
    assert!(
        state
            .iter()
            .all(|(name, _)| name == "step" || name.contains(".lora_")),
        "optimizer state for adapters only"
    );

    let fresh = Policy::load(base, Placement::default(), 0.0, Some(&lora()), None).unwrap();
    assert_ne!(
        fresh.logprobs(&job.pairs).unwrap(),
        policy.logprobs(&job.pairs).unwrap()
    );
    fresh.load(&ckpt).unwrap();
    assert_eq!(
        fresh.logprobs(&job.pairs).unwrap(),
        policy.logprobs(&job.pairs).unwrap()
    );
    // An adapter of another rank is refused, and the live adapters stay as they were.
    let other = Policy::load(
        base,
        Placement::default(),
        0.0,
        Some(&LoraConfig { rank: 2, ..lora() }),
        None,
    )
    .unwrap();
    let kept = other.logprobs(&job.pairs).unwrap();
    assert!(other.load(&ckpt).is_err());
    assert_eq!(other.logprobs(&job.pairs).unwrap(), kept);
}
