//! Gradient accumulation in the critic: value updates over mini-batches of 4 with micro-batches
//! of 1, 2 and 4 samples equal those without (within 1e-5), on the test kit's stage-1 model;
//! so do updates with activation checkpointing, with and without accumulation.

use rrlhf_critic_service::engine::{Critic, TrainJob};
use rrlhf_model::Placement;
use rrlhf_testkit::models::models;
use rrlhf_train::data_parallel::UpdatePlan;

/// Eight samples of different lengths with returns that vary along the response.
fn job(micro: usize) -> TrainJob {
    let pairs: Vec<(Vec<i64>, Vec<i64>)> = (0..8i64)
        .map(|i| {
            let prompt = (0..2 + i % 3).map(|t| 5 + i + t).collect();
            let response = (0..1 + (i * 5) % 7).map(|t| 20 + 3 * i + t).collect();
            (prompt, response)
        })
        .collect();
    let per_token = |f: fn(i64, usize) -> f32| -> Vec<Vec<f32>> {
        pairs
            .iter()
            .zip(0i64..)
            .map(|((_, r), i)| (0..r.len()).map(|t| f(i, t)).collect())
            .collect()
    };
    TrainJob {
        old_values: per_token(|i, t| 0.05 * (i as f32 - 3.0) + 0.01 * t as f32),
        returns: per_token(|i, t| (i as f32 - 3.5) * 0.4 + 0.1 * t as f32),
        pairs,
        value_clip: Some(0.2),
        plan: UpdatePlan {
            minibatch_size: 4,
            micro_batch_size: micro,
            epochs: 2,
            seed: 3,
            lr: 1e-3,
            max_grad_norm: 1.0,
        },
    }
}

#[test]
fn micro_batches_give_the_same_value_updates() {
    tch::set_num_threads(1);
    let stage1 = &models().stage1;
    let trained = |micro: usize, checkpointing: bool| {
        let mut critic = Critic::load(stage1, Placement::default(), 0.0, None, None).unwrap();
        critic.set_activation_checkpointing(checkpointing);
        let stats = critic.value_update(&job(micro)).unwrap();
        let probe = critic
            .values(&[(vec![5, 6, 7], vec![8, 9, 10, 11])])
            .unwrap();
        (stats, probe)
    };
    let (whole, reference) = trained(0, false);
    assert_eq!(whole.updates, 4, "2 epochs × 2 mini-batches");
    for (micro, checkpointing) in [(1, false), (2, false), (4, false), (0, true), (2, true)] {
        let (stats, probe) = trained(micro, checkpointing);
        assert_eq!(stats.updates, 4);
        let checksum = (stats.param_checksum - whole.param_checksum).abs();
        assert!(
            checksum <= 1e-5 * whole.param_checksum.abs().max(1.0),
            "micro-batches of {micro}, checkpointing {checkpointing}: weights' checksum differs by {checksum}"
        );
        for (a, b) in probe[0].iter().zip(&reference[0]) {
            assert!(
                (a - b).abs() < 1e-5,
                "micro-batches of {micro}, checkpointing {checkpointing}: value {a} vs {b}"
            );
        }
        assert!((stats.loss_mean - whole.loss_mean).abs() < 1e-5);
    }
}
