//! Numerical parity with Hugging Face transformers, both ways, on padded batches (f32, 1e-4).
//!
//! Forward: transformers builds and saves tiny checkpoints and their logits
//! (`python/parity/hf_parity.py make`); we load them and must reproduce the logits.
//! Reverse: we save checkpoints (re-saved HF ones and fresh ones of our own) with our logits;
//! transformers loads them and must reproduce ours (`hf_parity.py check`).

use std::collections::HashMap;
use std::path::Path;

use rrlhf_model::{Arch, CausalLm, Placement};
use tch::Tensor;

use crate::common::{init, run_python, tiny_model};

const TOL: f64 = 1e-4;

fn read(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

fn logits(model: &CausalLm, t: &HashMap<String, Tensor>, side: &str) -> Tensor {
    let _guard = tch::no_grad_guard();
    model.logits(
        &t[&format!("{side}_ids")],
        Some(&t[&format!("{side}_mask")]),
        &t[&format!("{side}_positions")],
        None,
    )
}

fn max_masked_diff(a: &Tensor, b: &Tensor, mask: &Tensor) -> f64 {
    let keep = mask.to_kind(tch::Kind::Bool).unsqueeze(-1).expand_as(a);
    (a - b).abs().masked_select(&keep).max().double_value(&[])
}

#[test]
fn logits_match_transformers_both_ways() {
    init();
    let fixtures = tempfile::tempdir().unwrap();
    run_python(
        "parity/hf_parity.py",
        &["make", "--out", fixtures.path().to_str().unwrap()],
    );
    let ours = tempfile::tempdir().unwrap();

    let mut cases: Vec<_> = std::fs::read_dir(fixtures.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert_eq!(cases.len(), 8, "fixture cases");
    let mut batch = None;
    for case in &cases {
        let name = case.file_name().unwrap().to_str().unwrap();
        let model = CausalLm::from_dir(&case.join("model"), Placement::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let expected = read(&case.join("expected.safetensors"));
        for side in ["left", "right"] {
            let got = logits(&model, &expected, side);
            let diff = max_masked_diff(
                &got,
                &expected[&format!("{side}_logits")],
                &expected[&format!("{side}_mask")],
            );
            eprintln!("forward {name}/{side}: max |Δlogit| = {diff:.2e}");
            assert!(
                diff <= TOL,
                "{name}/{side}: max |Δlogit| {diff:.2e} > {TOL:.0e}"
            );
        }
        model.save(&ours.path().join(name)).unwrap();
        batch.get_or_insert(expected);
    }

    // Fresh models of our own, saved by us: transformers must open them as they are.
    let batch = batch.unwrap();
    for (name, arch, tied) in [
        ("rust_llama_untied", Arch::Llama, false),
        ("rust_qwen2_tied", Arch::Qwen2, true),
        ("rust_qwen3_untied", Arch::Qwen3, false),
        ("rust_mistral_tied", Arch::Mistral, true),
    ] {
        tiny_model(arch, tied, 128, 11)
            .save(&ours.path().join(name))
            .unwrap();
    }
    for entry in std::fs::read_dir(ours.path()).unwrap() {
        let dir = entry.unwrap().path();
        let model = CausalLm::from_dir(&dir, Placement::default()).unwrap();
        let mut out: Vec<(String, Tensor)> = vec![];
        for side in ["left", "right"] {
            for key in ["ids", "mask", "positions"] {
                let k = format!("{side}_{key}");
                out.push((k.clone(), batch[&k].shallow_clone()));
            }
            out.push((format!("{side}_logits"), logits(&model, &batch, side)));
        }
        Tensor::write_safetensors(&out, dir.join("rust_logits.safetensors")).unwrap();
    }
    let report = run_python(
        "parity/hf_parity.py",
        &[
            "check",
            "--root",
            ours.path().to_str().unwrap(),
            "--tol",
            &TOL.to_string(),
        ],
    );
    eprintln!("reverse (transformers loading our checkpoints):\n{report}");
    assert!(report.contains("over 12 checkpoints"), "{report}");
}
