//! LoRA through the CLI: `rrlhf sft --lora-rank` trains adapters only and writes them in PEFT's
//! layout, which the model commands accept as a model; `rrlhf model merge` folds them into a
//! plain checkpoint whose untargeted weights are the base's, bit for bit; bad LoRA options are refused by name.

use std::collections::HashMap;

use tch::Tensor;

use crate::fixture::{fixture, hh_data, logprobs, ok, rrlhf, sft};

fn weights(dir: &std::path::Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(dir.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

#[test]
fn lora_sft_writes_a_peft_adapter_that_merges_into_the_base() {
    let f = fixture();
    let root = tempfile::tempdir().unwrap();
    let adapter = root.path().join("adapter");
    let args = [
        "--steps",
        "30",
        "--batch-size",
        "8",
        "--max-len",
        "128",
        "--lr",
        "3e-3",
        "--lora-rank",
        "8",
        "--lora-alpha",
        "16",
        "--lora-target-modules",
        "q_proj,v_proj,up_proj",
    ];
    let (_, summary) = sft(&args, &adapter);
    let loss = |k: &str| summary[k].as_f64().unwrap();
    assert!(
        loss("final_eval_loss") < loss("initial_eval_loss"),
        "LoRA SFT learns: {summary}"
    );
    assert!(adapter.join("adapter_config.json").exists());
    assert!(adapter.join("adapter_model.safetensors").exists());
    assert!(
        !adapter.join("model.safetensors").exists(),
        "no copy of the base"
    );
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["r"], 8);
    assert_eq!(
        config["target_modules"],
        serde_json::json!(["q_proj", "v_proj", "up_proj"])
    );

    let merged = root.path().join("merged");
    ok(rrlhf()
        .args(["model", "merge", "--base"])
        .arg(&f.model)
        .arg("--adapter")
        .arg(&adapter)
        .arg("--out")
        .arg(&merged)
        .output()
        .unwrap());
    let (base, out) = (weights(&f.model), weights(&merged));
    assert_eq!(base.len(), out.len());
    let mut changed = 0;
    for (name, w) in &base {
        let same = w.equal(&out[name]);
        let targeted = ["q_proj", "v_proj", "up_proj"]
            .iter()
            .any(|m| name.contains(m));
        assert!(
            same != targeted || !name.ends_with("weight"),
            "{name}: changed {}",
            !same
        );
        changed += usize::from(!same);
    }
    assert!(changed > 0, "the adapters moved the targeted weights");
    assert!(merged.join("tokenizer.json").exists());

    // The adapter directory also works as a model (its base + the adapter), like the merge.
    let rows = |dir: &std::path::Path| -> Vec<f64> {
        let out = ok(logprobs(dir, b"{\"ids\": [5, 17, 300, 2, 9, 41]}\n"));
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        v["logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let (adapted, plain, base) = (rows(&adapter), rows(&merged), rows(&f.model));
    for (a, m) in adapted.iter().zip(&plain) {
        assert!((a - m).abs() < 1e-4, "adapter {a} vs merged {m}");
    }
    assert_ne!(adapted, base);
}

#[test]
fn bad_lora_options_are_named() {
    let f = fixture();
    let root = tempfile::tempdir().unwrap();
    for (extra, needle) in [
        (
            &["--lora-rank", "4", "--lora-target-modules", "lm_head"][..],
            "`lm_head`",
        ),
        (&["--lora-rank", "4", "--lora-alpha", "0"][..], "lora alpha"),
        (
            &[
                "--lora-rank",
                "4",
                "--lora-dropout",
                "0.1",
                "--activation-checkpointing",
            ][..],
            "lora dropout must be 0 with activation checkpointing",
        ),
    ] {
        let out = rrlhf()
            .args(["sft", "--steps", "1", "--model"])
            .arg(&f.model)
            .arg("--data")
            .arg(hh_data())
            .arg("--out")
            .arg(root.path().join("x"))
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(needle),
            "{extra:?}: {stderr}"
        );
    }
}
