//! The reward-model pipeline end to end on a few hundred shared HH-RLHF pairs: stage 1 →
//! stage 2 → eval → calibrate, and the errors bad input gets.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use std::io::{BufRead, Write};

use crate::fixture::{fixture, hh_data, hh_subset, ok, rrlhf};

struct Trained {
    _root: tempfile::TempDir,
    data: PathBuf,
    stage1: PathBuf,
    stage2: PathBuf,
}

/// Stage 1 and stage 2 trained once (tiny model, 300 pairs, few steps) and shared.
fn trained() -> &'static Trained {
    static T: OnceLock<Trained> = OnceLock::new();
    T.get_or_init(|| {
        let root = tempfile::tempdir().unwrap();
        let data = hh_subset(root.path(), 300);
        let (stage1, stage2) = (root.path().join("rm1"), root.path().join("rm2"));
        for (stage, base, out, steps) in [
            ("1", &fixture().model, &stage1, "40"),
            ("2", &stage1, &stage2, "40"),
        ] {
            let run = rrlhf()
                .args([
                    "rm",
                    "train",
                    "--stage",
                    stage,
                    "--steps",
                    steps,
                    "--batch-size",
                    "8",
                    "--max-len",
                    "96",
                    "--lr",
                    "2e-3",
                    "--eval-every",
                    "20",
                    "--heads",
                    "5",
                    "--alpha",
                    "2",
                    "--base",
                ])
                .arg(base)
                .arg("--data")
                .arg(&data)
                .arg("--out")
                .arg(out)
                .output()
                .unwrap();
            ok(run);
        }
        Trained {
            _root: root,
            data,
            stage1,
            stage2,
        }
    })
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn stage2_shrinks_sigma_on_assigned_data_and_records_its_lineage() {
    let t = trained();
    let summary = json(&t.stage2.join("rm_summary.json"));
    let sigma = summary["assigned_sigma"].as_array().unwrap();
    let (before, after) = (sigma[0].as_f64().unwrap(), sigma[1].as_f64().unwrap());
    assert!(
        after < 0.8 * before,
        "σ on each head's own pairs should fall (appendix B.1): {before} → {after}"
    );

    let cfg = json(&t.stage2.join("config.json"));
    let meta = &cfg["rrlhf_reward"];
    assert_eq!(meta["kind"], "brme");
    assert_eq!(meta["heads"], 5);
    assert_eq!(meta["alpha"], 2.0);
    assert_eq!(Path::new(meta["parent"].as_str().unwrap()), t.stage1);
    assert!(meta["head_layout"].as_str().unwrap().contains("brme.mu"));
    let stage1_cfg = json(&t.stage1.join("config.json"));
    assert_eq!(
        stage1_cfg["architectures"][0],
        "LlamaForSequenceClassification"
    );
    assert_eq!(stage1_cfg["num_labels"], 1);

    // Each training pair went to one head; the heads share the data evenly.
    let assignment = json(&t.stage2.join("brme_assignment.json"));
    let heads: Vec<i64> = assignment["assignment"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_i64().unwrap())
        .collect();
    assert_eq!(
        heads.len(),
        summary["train_pairs"].as_u64().unwrap() as usize
    );
    for h in 0..5 {
        let n = heads.iter().filter(|&&x| x == h).count();
        assert!(
            n.abs_diff(heads.len() / 5) <= 1,
            "head {h} got {n} of {} pairs",
            heads.len()
        );
    }
}

#[test]
fn eval_reports_every_field_with_plots() {
    let t = trained();
    let plots = tempfile::tempdir().unwrap();
    let out = rrlhf()
        .args(["rm", "eval", "--json", "--max-len", "96", "--model"])
        .arg(&t.stage2)
        .arg("--data")
        .arg(&t.data)
        .arg("--plots")
        .arg(plots.path())
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_str(&ok(out)).unwrap();
    let pairs = report["pairs"].as_u64().unwrap();
    assert!(
        (10..80).contains(&pairs),
        "evaluated on the held-out split only: {pairs}"
    );
    for key in [
        "nominal",
        "mean",
        "min",
        "max",
        "median",
        "tradeoff:0.5",
        "stage1",
        "head_0",
        "head_4",
    ] {
        let acc = report["accuracy"][key]
            .as_f64()
            .unwrap_or_else(|| panic!("accuracy.{key} missing"));
        assert!((0.0..=1.0).contains(&acc));
    }
    for source in ["stage1", "nominal", "mean", "tradeoff:0.5"] {
        for side in ["chosen", "rejected"] {
            for stat in ["min", "max", "range", "mean", "std"] {
                assert!(
                    report["coverage"][source][side][stat].is_number(),
                    "coverage.{source}.{side}.{stat}"
                );
            }
        }
        assert!(report["normalized_margin"][source]["mean"].is_number());
    }
    let freq: f64 = report["nominal_head_frequency"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_f64().unwrap())
        .sum();
    assert!((freq - 1.0).abs() < 1e-9);
    assert_eq!(report["mean_sigma_per_head"].as_array().unwrap().len(), 5);
    for plot in ["scatter_stage1", "scatter_brme", "margin_hist"] {
        let path = report["plots"][plot].as_str().unwrap();
        assert_eq!(&std::fs::read(path).unwrap()[1..4], b"PNG", "{plot}");
    }

    // Per category, when the data has categories.
    let dir = tempfile::tempdir().unwrap();
    let generic = dir.path().join("cats.jsonl");
    let mut f = std::fs::File::create(&generic).unwrap();
    for i in 0..12 {
        let cat = if i % 2 == 0 { "math" } else { "writing" };
        writeln!(f, "{}", serde_json::json!({"prompt": format!("Q{i}:"), "chosen": " good answer", "rejected": " bad", "category": cat})).unwrap();
    }
    drop(f);
    let out = rrlhf()
        .args(["rm", "eval", "--json", "--split", "all", "--model"])
        .arg(&t.stage2)
        .arg("--data")
        .arg(&generic)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_str(&ok(out)).unwrap();
    assert_eq!(report["per_category"]["math"]["pairs"], 6);
    assert!(report["per_category"]["writing"]["accuracy"]["nominal"].is_number());
}

#[test]
fn calibrate_stores_statistics_with_the_model() {
    let t = trained();
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&t.stage2).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, copy.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    let out = rrlhf()
        .args(["rm", "calibrate", "--max-len", "96", "--model"])
        .arg(copy.path())
        .arg("--data")
        .arg(&t.data)
        .output()
        .unwrap();
    ok(out);
    let cal = &json(&copy.path().join("config.json"))["rrlhf_reward"]["calibration"];
    assert!(cal["std"].as_f64().unwrap() > 0.0);
    let pairs = rrlhf_data::preference::load_pairs(&t.data, &Default::default())
        .unwrap()
        .pairs
        .len();
    assert_eq!(
        cal["count"],
        2 * pairs,
        "chosen and rejected of every usable pair"
    );
}

/// Asserts failure with one stderr line containing `needle` (progress output aside).
fn fails_with(out: std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure: {stderr}");
    let last = stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect::<Vec<_>>();
    assert_eq!(last.len(), 1, "{stderr}");
    assert!(last[0].contains(needle), "`{needle}` not in {}", last[0]);
}

#[test]
fn bad_reward_inputs_are_named() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let data = hh_subset(dir.path(), 40);
    let train = |extra: &[&str], base: &Path, data: &Path| {
        rrlhf()
            .args(["rm", "train", "--steps", "1"])
            .args(extra)
            .arg("--base")
            .arg(base)
            .arg("--data")
            .arg(data)
            .arg("--out")
            .arg(dir.path().join("out"))
            .output()
            .unwrap()
    };
    fails_with(
        train(&["--stage", "2", "--heads", "0"], &f.model, &data),
        "K ≥ 1",
    );
    fails_with(
        train(&["--stage", "2", "--alpha", "0"], &f.model, &data),
        "α",
    );
    fails_with(
        train(
            &["--stage", "1"],
            &f.model,
            Path::new("/nonexistent/pairs.jsonl"),
        ),
        "/nonexistent/pairs.jsonl",
    );
    fails_with(
        train(&["--stage", "1"], Path::new("/nonexistent/base"), &data),
        "/nonexistent/base",
    );
    // Stage 2 needs a stage-1 reward model, not an SFT model.
    fails_with(train(&["--stage", "2"], &f.model, &data), "reward model");

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}\n{\"prompt\": \"p\", \"chosen\": 3}\n").unwrap();
    fails_with(train(&["--stage", "1"], &f.model, &bad), "bad.jsonl:2");

    // A base model whose tokenizer has more tokens than its embedding matrix.
    let mismatched = dir.path().join("mismatched");
    std::fs::create_dir(&mismatched).unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(f.model.join(file), mismatched.join(file)).unwrap();
    }
    let big_tok = dir.path().join("big-tok");
    ok(rrlhf()
        .args(["tokenizer", "train", "--vocab-size", "1024", "--data"])
        .arg(hh_data())
        .arg("--out")
        .arg(&big_tok)
        .output()
        .unwrap());
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(big_tok.join(file), mismatched.join(file)).unwrap();
    }
    fails_with(train(&["--stage", "1"], &mismatched, &data), "tokenizer");

    // Evaluating a model that is not a reward model.
    let out = rrlhf()
        .args(["rm", "eval", "--model"])
        .arg(&f.model)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    fails_with(out, "not a reward model");
}

/// `rrlhf serve reward` as its own process on a free port, `rrlhf score` against it, then
/// SIGTERM: the server drains and exits cleanly.
#[test]
fn serve_and_score_as_separate_processes() {
    let t = trained();
    let mut server = rrlhf()
        .args([
            "serve",
            "reward",
            "--addr",
            "127.0.0.1:0",
            "--max-length",
            "96",
            "--threads",
            "1",
            "--model",
        ])
        .arg(&t.stage2)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The server prints its address once the model is loaded, warmed up and SERVING.
    let mut lines = std::io::BufReader::new(server.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .unwrap();
        if let Some(addr) = line.strip_prefix("reward service listening on ") {
            break addr.to_string();
        }
    };
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    let out = rrlhf()
        .args([
            "score",
            "--json",
            "--strategy",
            "min",
            "--addr",
            &addr,
            "--prompt",
            "\n\nHuman: hi\n\nAssistant:",
            "--response",
            " hello there",
        ])
        .output()
        .unwrap();
    let score: serde_json::Value = serde_json::from_str(&ok(out)).unwrap();
    assert_eq!(score["heads"].as_array().unwrap().len(), 5);
    assert_eq!(score["reward"], score["min"]);
    let out = rrlhf()
        .args(["score", "--addr", &addr, "--prompt", "hi", "--response", ""])
        .output()
        .unwrap();
    fails_with(out, "samples[0].response");

    let pid = server.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = server.wait().unwrap();
    let log = drain.join().unwrap().join("\n");
    assert!(
        status.success(),
        "graceful shutdown exits 0: {status:?}\n{log}"
    );
    assert!(log.contains("shutting down"), "{log}");
}
