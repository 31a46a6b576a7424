//! Stage 2's head-diversity options: per-head towers, noise on their starting weights and
//! bootstrap resamples train, save and load; the heads end up different; bootstrap keeps the
//! micro-batch invariance of the partition. Its own binary: the stages seed libtorch's global
//! generator.

mod common;

use common::{pairs, tensors, tiny_base};
use rrlhf_model::reward_model::RewardModel;
use rrlhf_model::{Batch, PadSide, Placement};
use rrlhf_train::rm::{
    HeadData, HeadDiversity, RmConfig, bootstrap_weights, train_stage1, train_stage2,
};
use tch::Tensor;

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn diverse_heads_train_save_load_and_differ() {
    tch::set_num_threads(1);
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("base");
    let tok = tiny_base(&base);
    let data = root.path().join("pairs.jsonl");
    let rm = |micro: usize, diversity: HeadDiversity| RmConfig {
        steps: Some(4),
        batch_size: 4,
        micro_batch_size: micro,
        lr: 1e-3,
        eval_fraction: 0.25,
        eval_every: 0,
        heads: 3,
        show_progress: false,
        diversity,
        ..RmConfig::default()
    };
    let plain = HeadDiversity::default();
    let stage1 = root.path().join("stage1");
    let placement = Placement::default();
    train_stage1(
        &base,
        &tok,
        &data,
        pairs(),
        &rm(0, plain),
        placement,
        &stage1,
    )
    .unwrap();

    let diverse = HeadDiversity {
        data: HeadData::Bootstrap,
        tower_layers: 1,
        tower_init_noise: 0.05,
    };
    let train = |micro: usize, name: &str| {
        let out = root.path().join(name);
        let cfg = rm(micro, diverse.clone());
        let outcome = train_stage2(&stage1, &tok, &data, pairs(), &cfg, placement, &out).unwrap();
        assert!(outcome.assigned_sigma.is_some());
        out
    };
    let out = train(0, "diverse");

    // Saved with its towers and bootstrap record; loads strictly.
    let model = RewardModel::from_dir(&out, placement).unwrap();
    assert_eq!((model.meta.tower_layers, model.towers.len()), (1, 3));
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("brme_assignment.json")).unwrap())
            .unwrap();
    assert_eq!(record["head_data"], "bootstrap");
    let counts = record["bootstrap_counts"].as_array().unwrap();
    let n = record["train_pairs"].as_u64().unwrap();
    assert_eq!(counts.len() as u64, n, "one row per training pair");
    for h in 0..3 {
        let drawn: u64 = counts.iter().map(|r| r[h].as_u64().unwrap()).sum();
        assert_eq!(drawn, n, "head {h} draws as many pairs as there are");
    }

    // The towers started apart (noise) and trained on other resamples: they differ, and so do
    // the heads' rewards.
    let w = tensors(&out);
    let get = |name: &str| &w.iter().find(|(n, _)| n == name).unwrap().1;
    let q = "layers.0.self_attn.q_proj.weight";
    let t0 = get(&format!("brme.towers.0.{q}"));
    assert!(max_diff(t0, get(&format!("brme.towers.1.{q}"))) > 1e-4);
    let seqs: Vec<Vec<i64>> = pairs()
        .iter()
        .map(|p| tok.encode_pair(&p.prompt, &p.chosen, 64).unwrap().0)
        .collect();
    let batch = Batch::pad(&seqs, tok.pad_id, PadSide::Right, tch::Device::Cpu).unwrap();
    let mu = model.forward(&batch).unwrap().mu;
    let spread = mu
        .std_dim(1, true, false)
        .mean(tch::Kind::Float)
        .double_value(&[]);
    assert!(
        spread > 1e-4,
        "heads give the same rewards (std over heads {spread})"
    );

    // Bootstrap weights keep micro-batches equivalent to one pass.
    let micro = tensors(&train(1, "diverse-micro"));
    let worst = w
        .iter()
        .zip(&micro)
        .map(|((_, a), (_, b))| max_diff(a, b))
        .fold(0.0, f64::max);
    assert!(worst < 1e-5, "micro-batches of 1 differ by {worst}");

    // Noise without towers has nothing to act on.
    let bad = HeadDiversity {
        tower_init_noise: 0.1,
        ..HeadDiversity::default()
    };
    let err = train_stage2(
        &stage1,
        &tok,
        &data,
        pairs(),
        &rm(0, bad),
        placement,
        &root.path().join("bad"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("tower"), "{err}");
}

#[test]
fn bootstrap_weights_draw_n_pairs_per_head() {
    let w = bootstrap_weights(50, 4, 3);
    assert_eq!(w.len(), 200);
    for h in 0..4 {
        let drawn: f32 = (0..50).map(|i| w[i * 4 + h]).sum();
        assert_eq!(drawn, 50.0);
    }
    // Heads draw different resamples.
    assert!((0..50).any(|i| w[i * 4] != w[i * 4 + 1]));
    assert_eq!(w, bootstrap_weights(50, 4, 3));
}
