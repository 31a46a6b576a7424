//! A LoRA critic: value updates train the adapters and the value head only — the loss falls
//! and the optimizer holds state for nothing else — and a checkpoint is a PEFT `SEQ_CLS`
//! adapter (adapters + `score`, no copy of the backbone) that a fresh LoRA critic loads to the
//! same values.

use rrlhf_critic_service::engine::{Critic, TrainJob};
use rrlhf_model::{LoraConfig, Placement};
use rrlhf_runtime::training_rpc::Trainable;
use rrlhf_testkit::models::models;
use rrlhf_train::data_parallel::UpdatePlan;

fn lora() -> LoraConfig {
    LoraConfig::new(4, 8.0, &["q_proj", "v_proj", "up_proj"])
}

fn job() -> TrainJob {
    let pairs: Vec<(Vec<i64>, Vec<i64>)> = (0..4i64)
        .map(|i| {
            (
                (0..3).map(|t| 5 + i + t).collect(),
                (0..4).map(|t| 20 + i + t).collect(),
            )
        })
        .collect();
    let per_token = |f: &dyn Fn(i64, usize) -> f32| -> Vec<Vec<f32>> {
        (0..4i64)
            .map(|i| (0..4).map(|t| f(i, t)).collect())
            .collect()
    };
    TrainJob {
        old_values: per_token(&|_, _| 0.0),
        returns: per_token(&|i, t| (i as f32 - 1.5) * 0.5 + 0.1 * t as f32),
        pairs,
        value_clip: None,
        plan: UpdatePlan {
            minibatch_size: 0,
            micro_batch_size: 0,
            epochs: 8,
            seed: 0,
            lr: 1e-2,
            max_grad_norm: 1.0,
        },
    }
}

#[test]
fn a_lora_critic_trains_adapters_and_head_and_checkpoints_them() {
    tch::set_num_threads(1);
    let stage1 = &models().stage1;
    let critic = Critic::load(stage1, Placement::default(), 0.0, Some(&lora()), None).unwrap();
    let probe = vec![(vec![5i64, 6, 7], vec![8i64, 9, 10, 11])];
    let before = critic.values(&probe).unwrap();
    let stats = critic.value_update(&job()).unwrap();
    assert!(stats.loss_last < stats.loss_first, "{stats:?}");
    assert_ne!(critic.values(&probe).unwrap(), before);

    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    critic.save(&ckpt).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["task_type"], "SEQ_CLS");
    assert_eq!(config["modules_to_save"], serde_json::json!(["score"]));
    assert!(
        !ckpt.join("model.safetensors").exists(),
        "no copy of the backbone"
    );
    let saved = tch::Tensor::read_safetensors(ckpt.join("adapter_model.safetensors")).unwrap();
    assert!(
        saved
            .iter()
            .any(|(n, _)| n == "base_model.model.score.weight")
    );
    // Only adapters and the head trained: the optimizer state holds nothing else.
    let state = tch::Tensor::read_safetensors(ckpt.join("optimizer.safetensors")).unwrap();
    assert!(
        state
            .iter()
            .all(|(n, _)| { n == "step" || n.contains(".lora_") || n.ends_with("score.weight") })
    );

    let fresh = Critic::load(stage1, Placement::default(), 0.0, Some(&lora()), None).unwrap();
    assert_eq!(
        fresh.values(&probe).unwrap(),
        before,
        "a fresh adapter changes nothing"
    );
    fresh.load(&ckpt).unwrap();
    assert_eq!(
        fresh.values(&probe).unwrap(),
        critic.values(&probe).unwrap()
    );
}
