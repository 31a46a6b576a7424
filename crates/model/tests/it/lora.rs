//! LoRA adapters: a fresh adapter changes nothing; a trained one (random B here) changes the
//! logits, switches off to the exact base, survives a PEFT save and load, merges into the
//! weights within 1e-5, and loads in `peft` with the same logits within 1e-4.

use rrlhf_model::lora::{ADAPTER_WEIGHTS_FILE, TARGETABLE};
use rrlhf_model::{Arch, Batch, CausalLm, LoraConfig, PadSide, Placement};
use tch::{Kind, Tensor};

use crate::common::{hashed_noise, init, run_python, tiny_model};

fn lora(targets: &[&str]) -> LoraConfig {
    LoraConfig::new(4, 8.0, targets)
}

fn batch() -> Batch {
    let seqs = vec![
        vec![3i64, 9, 27, 4, 11, 5],
        vec![8, 2, 19],
        vec![1, 44, 6, 30],
    ];
    Batch::pad(&seqs, 0, PadSide::Right, tch::Device::Cpu).unwrap()
}

fn logits(model: &CausalLm) -> Tensor {
    tch::no_grad(|| model.batch_logits(&batch()))
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Gives every adapter's B deterministic non-zero values, as training would.
fn perturb_adapters(model: &CausalLm) {
    let _guard = tch::no_grad_guard();
    let mut vars: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (i, (name, mut var)) in vars.into_iter().enumerate() {
        if name.contains(".lora_B.") {
            var.copy_(&(hashed_noise(&var.size(), 500 + i as i64) * 0.2));
        }
    }
}

#[test]
fn adapters_switch_save_load_and_merge() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let mut model = tiny_model(Arch::Llama, false, 64, 5);
    let base = logits(&model);
    model.add_lora(&lora(&TARGETABLE)).unwrap();
    assert_eq!(max_diff(&logits(&model), &base), 0.0, "B = 0: no change");
    let trainable: Vec<String> = model
        .vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        trainable.len(),
        2 * 7 * 2,
        "A and B of 7 modules × 2 layers, base frozen"
    );
    assert!(trainable.iter().all(|n| n.contains(".lora_")));

    perturb_adapters(&model);
    let adapted = logits(&model);
    assert!(max_diff(&adapted, &base) > 1e-3, "the adapters act");
    let switch = model.backbone.lora().unwrap().1.clone();
    switch.set_enabled(false);
    assert_eq!(
        max_diff(&logits(&model), &base),
        0.0,
        "switched off: the base"
    );
    switch.set_enabled(true);

    let adapter = dir.path().join("adapter");
    model.save_adapter(&adapter, "base").unwrap();
    model.save(&dir.path().join("base")).unwrap();
    let mut back = CausalLm::from_dir(&dir.path().join("base"), Placement::default()).unwrap();
    assert_eq!(
        max_diff(&logits(&back), &base),
        0.0,
        "the base save holds no adapter"
    );
    back.load_adapter(&adapter).unwrap();
    assert_eq!(max_diff(&logits(&back), &adapted), 0.0);

    back.merge_lora();
    let merged = logits(&back);
    assert!(
        max_diff(&merged, &adapted) < 1e-5,
        "{}",
        max_diff(&merged, &adapted)
    );
    back.save(&dir.path().join("merged")).unwrap();
    let plain = CausalLm::from_dir(&dir.path().join("merged"), Placement::default()).unwrap();
    assert!(max_diff(&logits(&plain), &adapted) < 1e-5);

    // A wrong adapter (another rank) is refused by name and shape.
    let mut other = CausalLm::from_dir(&dir.path().join("base"), Placement::default()).unwrap();
    let cfg = LoraConfig {
        rank: 2,
        ..lora(&TARGETABLE)
    };
    other.add_lora(&cfg).unwrap();
    other
        .save_adapter(&dir.path().join("rank2"), "base")
        .unwrap();
    std::fs::copy(
        adapter.join("adapter_config.json"),
        dir.path().join("rank2/adapter_config.json"),
    )
    .unwrap();
    let mut fresh = CausalLm::from_dir(&dir.path().join("base"), Placement::default()).unwrap();
    let e = fresh.load_adapter(&dir.path().join("rank2")).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("lora_A.weight` has shape [2, "), "{msg}");
    assert!(adapter.join(ADAPTER_WEIGHTS_FILE).exists());
}

#[test]
fn an_adapter_saved_by_rrlhf_loads_in_peft_with_the_same_logits() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let mut model = tiny_model(Arch::Llama, true, 64, 6);
    model.save(&dir.path().join("base")).unwrap();
    model
        .add_lora(&lora(&["q_proj", "v_proj", "down_proj"]))
        .unwrap();
    perturb_adapters(&model);
    let adapter = dir.path().join("adapter");
    model.save_adapter(&adapter, "base").unwrap();
    let b = batch();
    let inputs = dir.path().join("lora_inputs.safetensors");
    Tensor::write_safetensors(
        &[
            ("ids", &b.ids),
            ("mask", &b.mask),
            ("logits", &logits(&model).to_kind(Kind::Float)),
        ],
        &inputs,
    )
    .unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let report = run_python(
        "parity/hf_parity.py",
        &[
            "check-lora",
            "--base",
            &path(&dir.path().join("base")),
            "--adapter",
            &path(&adapter),
            "--inputs",
            &path(&inputs),
        ],
    );
    eprintln!("{report}");
    assert!(report.contains("lora: max"), "{report}");
}
