//! The commands do what they say: logprobs match the library, SFT lowers held-out loss and
//! its checkpoint reloads, generation honours its flags.

use rrlhf_model::{Batch, CausalLm, PadSide, Placement};

use crate::fixture::{fixture, logprobs, ok, rrlhf};

#[test]
fn logprobs_reads_jsonl_and_matches_the_model() {
    let f = fixture();
    let out = ok(logprobs(
        &f.model,
        b"{\"ids\": [5, 17, 300, 2]}\n\n{\"ids\": [9]}\n",
    ));
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    let got: Vec<f64> = rows[0]["logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(got.len(), 3);
    assert_eq!(
        rows[1]["logprobs"].as_array().unwrap().len(),
        0,
        "one token has nothing to predict"
    );

    tch::set_num_threads(1);
    let model = CausalLm::from_dir(&f.model, Placement::default()).unwrap();
    let batch = Batch::pad(&[vec![5, 17, 300, 2]], 0, PadSide::Right, tch::Device::Cpu).unwrap();
    let want = rrlhf_model::batch::rows_f32(&model.token_logprobs(&batch))
        .unwrap()
        .remove(0);
    for (g, w) in got.iter().zip(&want) {
        assert!((g - *w as f64).abs() < 1e-5, "{got:?} vs {want:?}");
    }
}

#[test]
fn sft_on_hh_lowers_held_out_loss_and_reloads() {
    let out_dir = tempfile::tempdir().unwrap();
    let args = [
        "--steps",
        "60",
        "--batch-size",
        "8",
        "--max-len",
        "128",
        "--lr",
        "3e-3",
    ];
    let (stdout, summary) = crate::fixture::sft(&args, out_dir.path());
    let (before, after) = (
        summary["initial_eval_loss"].as_f64().unwrap(),
        summary["final_eval_loss"].as_f64().unwrap(),
    );
    assert!(
        after < before - 0.5,
        "held-out loss {before} → {after}\n{stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(out_dir.path().join("train_log.jsonl"))
            .unwrap()
            .lines()
            .count(),
        60
    );

    // The checkpoint reloads (strictly) and generates, and transformers-style files are there.
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out_dir.path().join(file).exists(), "{file} missing");
    }
    let out = rrlhf()
        .args([
            "model",
            "generate",
            "--json",
            "--num-samples",
            "2",
            "--max-new-tokens",
            "5",
            "--temperature",
            "0",
            "--prompt",
        ])
        .arg("\n\nHuman: How do I bake bread?\n\nAssistant:")
        .arg("--model")
        .arg(out_dir.path())
        .output()
        .unwrap();
    let lines: Vec<serde_json::Value> = ok(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[0]["completion"], lines[1]["completion"],
        "greedy samples agree"
    );
}
