//! Strict checkpoint loading: a missing, unexpected or mis-shaped tensor is an error naming it.

use std::collections::HashMap;

use rrlhf_model::checkpoint::{self, INDEX_FILE, WEIGHTS_FILE};
use rrlhf_model::{Arch, CausalLm, ModelError, Placement};
use tch::{Kind, Tensor};

use crate::common::{init, tiny_model};

fn rewrite(dir: &std::path::Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let path = dir.join(WEIGHTS_FILE);
    let mut tensors: HashMap<String, Tensor> = Tensor::read_safetensors(&path)
        .unwrap()
        .into_iter()
        .collect();
    edit(&mut tensors);
    let list: Vec<(String, Tensor)> = tensors.into_iter().collect();
    Tensor::write_safetensors(&list, &path).unwrap();
}

#[test]
fn strict_loading_names_the_tensor() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(Arch::Llama, false, 64, 1);
    model.save(dir.path()).unwrap();
    CausalLm::from_dir(dir.path(), Placement::default()).expect("clean checkpoint loads");

    let name = "model.layers.1.mlp.up_proj.weight";
    rewrite(dir.path(), |t| {
        t.remove(name);
    });
    match CausalLm::from_dir(dir.path(), Placement::default()) {
        Err(e @ ModelError::MissingTensor { .. }) => assert!(e.to_string().contains(name), "{e}"),
        other => panic!("expected a missing-tensor error, got {other:?}"),
    }

    model.save(dir.path()).unwrap();
    rewrite(dir.path(), |t| {
        t.insert(
            "model.layers.0.extra.weight".into(),
            Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)),
        );
    });
    match CausalLm::from_dir(dir.path(), Placement::default()) {
        Err(e @ ModelError::UnexpectedTensor { .. }) => {
            assert!(e.to_string().contains("model.layers.0.extra.weight"), "{e}")
        }
        other => panic!("expected an unexpected-tensor error, got {other:?}"),
    }

    model.save(dir.path()).unwrap();
    let name = "model.layers.0.self_attn.k_proj.weight";
    rewrite(dir.path(), |t| {
        t.insert(
            name.into(),
            Tensor::zeros([3, 64], (Kind::Float, tch::Device::Cpu)),
        );
    });
    match CausalLm::from_dir(dir.path(), Placement::default()) {
        Err(e @ ModelError::ShapeMismatch { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(name) && msg.contains("[3, 64]"), "{msg}");
        }
        other => panic!("expected a shape error, got {other:?}"),
    }
}

#[test]
fn save_load_round_trip_is_exact_and_bf16_loads() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(Arch::Qwen2, true, 64, 2);
    model.save(dir.path()).unwrap();
    let back = CausalLm::from_dir(dir.path(), Placement::default()).unwrap();
    let ids = Tensor::from_slice(&[3i64, 9, 27, 4]).view([1, 4]);
    let pos = Tensor::arange(4, (Kind::Int64, tch::Device::Cpu)).view([1, 4]);
    let a = model.logits(&ids, None, &pos, None);
    let b = back.logits(&ids, None, &pos, None);
    assert_eq!((a - &b).abs().max().double_value(&[]), 0.0);

    let bf16 = Placement {
        kind: Kind::BFloat16,
        ..Placement::default()
    };
    let half = CausalLm::from_dir(dir.path(), bf16).unwrap();
    assert_eq!(half.kind(), Kind::BFloat16);
    let c = half.logits(&ids, None, &pos, None);
    let rel = ((&c - &b).abs().max() / b.abs().max()).double_value(&[]);
    assert!(rel < 0.1, "bf16 logits far from f32: {rel}");
}

#[test]
fn sharded_checkpoints_load() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(Arch::Llama, true, 64, 3);
    model.save(dir.path()).unwrap();
    let path = dir.path().join(WEIGHTS_FILE);
    let all: Vec<(String, Tensor)> = Tensor::read_safetensors(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let (a, b): (Vec<_>, Vec<_>) = all.into_iter().partition(|(n, _)| n.contains("layers.0"));
    let mut map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", &a),
        ("model-00002-of-00002.safetensors", &b),
    ] {
        Tensor::write_safetensors(part, dir.path().join(file)).unwrap();
        for (n, _) in part.iter() {
            map.insert(n.clone(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    CausalLm::from_dir(dir.path(), Placement::default()).expect("sharded checkpoint loads");
}

#[test]
fn large_saves_are_sharded_with_an_index_and_replace_the_other_layout() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(Arch::Llama, false, 64, 4);
    let files = |dir: &std::path::Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("safetensors"))
            .collect();
        names.sort();
        names
    };
    let ids = Tensor::from_slice(&[3i64, 9, 27, 4]).view([1, 4]);
    let pos = Tensor::arange(4, (Kind::Int64, tch::Device::Cpu)).view([1, 4]);
    let want = model.logits(&ids, None, &pos, None);

    model.save(dir.path()).unwrap();
    assert_eq!(files(dir.path()), [WEIGHTS_FILE]);
    // 40 kB shards: the tiny model's ~0.2 MB of weights span several.
    checkpoint::save_sharded(&model.vs, &[], dir.path(), 40_000).unwrap();
    let sharded = files(dir.path());
    let n = sharded.len() - 1;
    assert!(n >= 3, "{sharded:?}");
    assert_eq!(sharded[0], format!("model-00001-of-{n:05}.safetensors"));
    assert_eq!(sharded[n], INDEX_FILE, "and the single file is gone");
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(INDEX_FILE)).unwrap())
            .unwrap();
    assert_eq!(
        index["weight_map"].as_object().unwrap().len(),
        model.vs.variables().len()
    );
    let back = CausalLm::from_dir(dir.path(), Placement::default()).unwrap();
    let got = back.logits(&ids, None, &pos, None);
    assert_eq!((got - &want).abs().max().double_value(&[]), 0.0);

    model.save(dir.path()).unwrap();
    assert_eq!(
        files(dir.path()),
        [WEIGHTS_FILE],
        "shards and index removed"
    );
}
