//! BRME heads on their own towers, and deep ensembles served as one K-head model: layouts,
//! what they compute, and that they survive a save and load.

use std::path::Path;

use rrlhf_model::reward_model::{RewardKind, RewardMeta, RewardModel};
use rrlhf_model::{Arch, Batch, PadSide, Placement};
use tch::{Kind, Tensor};

use crate::common::{hashed_noise, init, tiny_model};

/// A stage-1 reward model over a tiny Llama, its score head and backbone perturbed by `seed`.
fn stage1(dir: &Path, seed: i64) -> RewardModel {
    tiny_model(Arch::Llama, true, 97, 21).save(dir).unwrap();
    let model =
        RewardModel::from_base(dir, RewardMeta::bradley_terry(None), Placement::default()).unwrap();
    let _guard = tch::no_grad_guard();
    for (i, (name, mut var)) in model.vs.variables().into_iter().enumerate() {
        let scale = if name.starts_with("score.") {
            0.8
        } else {
            0.02
        };
        let _ = var.f_add_(&(hashed_noise(&var.size(), seed * 1000 + i as i64) * scale));
    }
    model.save(dir).unwrap();
    model
}

fn batch() -> Batch {
    let seqs: Vec<Vec<i64>> = (0..4)
        .map(|i| (0..(5 + 3 * i)).map(|t| (t * 7 + i) % 97).collect())
        .collect();
    Batch::pad(&seqs, 0, PadSide::Right, tch::Device::Cpu).unwrap()
}

fn close(a: &Tensor, b: &Tensor) -> bool {
    let diff = (a - b).abs().max().double_value(&[]);
    diff < 1e-5
}

#[test]
fn towers_start_as_the_top_of_the_backbone_and_then_differ() {
    init();
    let dir = tempfile::tempdir().unwrap();
    stage1(dir.path(), 1);
    let shared_meta = RewardMeta::brme(3, 2.0, None).unwrap();
    let shared = RewardModel::from_base(dir.path(), shared_meta, Placement::default()).unwrap();
    let tower_meta = RewardMeta::brme(3, 2.0, None).unwrap().with_towers(1);
    let towers = RewardModel::from_base(dir.path(), tower_meta, Placement::default()).unwrap();
    assert_eq!(towers.towers.len(), 3);
    let names: Vec<String> = towers.vs.variables().into_keys().collect();
    let layers = towers.backbone.num_layers();
    assert!(names.contains(&"brme.towers.2.layers.0.self_attn.q_proj.weight".to_string()));
    assert!(names.contains(&"brme.towers.0.norm.weight".to_string()));
    assert!(!names.iter().any(|n| n.starts_with("brme.towers.3.")));
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("brme.towers.0.layers.1."))
    );

    // The same head rows (copied: other tests in this process draw from libtorch's global
    // generator too, so the seed alone does not make them equal) and towers that copy the top
    // layer: the same rewards as heads on the shared backbone, which checks the trunk/tower
    // split of the forward pass.
    {
        let _guard = tch::no_grad_guard();
        let from = shared.vs.variables();
        for (name, mut var) in towers.vs.variables() {
            if name.starts_with("brme.mu.") || name.starts_with("brme.sigma.") {
                var.copy_(&from[&name]);
            }
        }
    }
    let b = batch();
    let (a, t) = (shared.forward(&b).unwrap(), towers.forward(&b).unwrap());
    assert_eq!(t.mu.size(), [4, 3]);
    assert!(close(&a.mu, &t.mu) && close(&a.sigma, &t.sigma));
    let q = |m: &RewardModel, name: &str| m.vs.variables()[name].shallow_clone();
    assert!(close(
        &q(&towers, "brme.towers.1.layers.0.mlp.up_proj.weight"),
        &q(
            &towers,
            &format!("model.layers.{}.mlp.up_proj.weight", layers - 1)
        ),
    ));

    // A change to one tower moves only its own head.
    {
        let _guard = tch::no_grad_guard();
        let mut w = q(&towers, "brme.towers.1.layers.0.mlp.down_proj.weight");
        let _ = w.f_add_(&(hashed_noise(&w.size(), 9) * 0.5));
    }
    let moved = towers.forward(&b).unwrap();
    assert!(close(&moved.mu.select(1, 0), &t.mu.select(1, 0)));
    assert!(close(&moved.mu.select(1, 2), &t.mu.select(1, 2)));
    assert!(!close(&moved.mu.select(1, 1), &t.mu.select(1, 1)));

    let out = tempfile::tempdir().unwrap();
    towers.save(out.path()).unwrap();
    let back = RewardModel::from_dir(out.path(), Placement::default()).unwrap();
    assert_eq!(back.meta.tower_layers, 1);
    assert!(close(&back.forward(&b).unwrap().mu, &moved.mu));

    let too_many = RewardMeta::brme(2, 2.0, None)
        .unwrap()
        .with_towers(layers + 1);
    let err = RewardModel::from_base(dir.path(), too_many, Placement::default()).unwrap_err();
    assert!(err.to_string().contains("decoder layers"), "{err}");
}

#[test]
fn a_deep_ensemble_serves_each_member_as_a_head() {
    init();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let members: Vec<RewardModel> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| stage1(d.path(), 10 + i as i64))
        .collect();
    let paths: Vec<&Path> = dirs.iter().map(|d| d.path()).collect();
    let ensemble = rrlhf_model::ensemble::assemble(&paths, Placement::default()).unwrap();
    assert_eq!(ensemble.meta.kind, RewardKind::Ensemble);
    assert_eq!(ensemble.heads(), 3);
    let b = batch();
    let out = ensemble.forward(&b).unwrap();
    assert_eq!(out.mu.size(), [4, 3]);
    for (h, m) in members.iter().enumerate() {
        assert!(close(
            &out.mu.select(1, h as i64),
            &m.forward(&b).unwrap().mu.select(1, 0)
        ));
    }
    // Members differ, and σ is 1 everywhere so member 0 is the nominal head.
    assert!(!close(&out.mu.select(1, 0), &out.mu.select(1, 1)));
    assert!(close(
        &out.sigma,
        &Tensor::ones([4, 3], (Kind::Float, tch::Device::Cpu))
    ));

    let saved = tempfile::tempdir().unwrap();
    ensemble.save(saved.path()).unwrap();
    let back = RewardModel::from_dir(saved.path(), Placement::default()).unwrap();
    assert_eq!(back.meta.members.len(), 3);
    assert!(close(&back.forward(&b).unwrap().mu, &out.mu));
    assert!(
        back.token_values(&b).is_err(),
        "an ensemble is not a critic"
    );

    let one = rrlhf_model::ensemble::assemble(&paths[..1], Placement::default()).unwrap_err();
    assert!(one.to_string().contains("at least 2"), "{one}");
    let brme_dir = tempfile::tempdir().unwrap();
    RewardModel::from_base(
        paths[0],
        RewardMeta::brme(2, 2.0, None).unwrap(),
        Placement::default(),
    )
    .unwrap()
    .save(brme_dir.path())
    .unwrap();
    let mixed = [paths[0], brme_dir.path()];
    let err = rrlhf_model::ensemble::assemble(&mixed, Placement::default()).unwrap_err();
    assert!(err.to_string().contains("not a stage-1"), "{err}");
}
