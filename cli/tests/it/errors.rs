//! Bad input ends in a one-line error naming what is wrong, and a non-zero exit.

use std::process::Output;

use crate::fixture::{fixture, logprobs, rrlhf};

/// Asserts failure with a single stderr line that contains every `needle`.
fn fails_naming(out: Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected:\n{stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "`{n}` not in: {}", lines[0]);
    }
}

#[test]
fn unreadable_files_are_named() {
    let f = fixture();
    let out = rrlhf()
        .args([
            "tokenizer",
            "train",
            "--data",
            "/nonexistent/corpus.jsonl",
            "--out",
            "/tmp/x",
        ])
        .output()
        .unwrap();
    fails_naming(out, &["/nonexistent/corpus.jsonl"]);
    let out = rrlhf()
        .args(["model", "logprobs", "--model", "/nonexistent/model"])
        .output()
        .unwrap();
    fails_naming(out, &["/nonexistent/model", "config.json"]);
    let out = rrlhf()
        .args([
            "sft",
            "--data",
            "/nonexistent/d.jsonl",
            "--out",
            "/tmp/never",
            "--model",
        ])
        .arg(&f.model)
        .output()
        .unwrap();
    fails_naming(out, &["/nonexistent/d.jsonl"]);
}

#[test]
fn malformed_jsonl_lines_are_named() {
    let f = fixture();
    let out = logprobs(&f.model, b"{\"ids\": [1, 2]}\n{\"ids\": [1, oops]}\n");
    fails_naming(out, &["stdin line 2", "invalid JSON"]);
    for (input, needle) in [
        ("{\"ids\": [1, 99999]}\n", "99999"),
        ("{\"tokens\": [1]}\n", "`ids`"),
        ("{\"ids\": []}\n", "empty"),
    ] {
        fails_naming(
            logprobs(&f.model, input.as_bytes()),
            &["stdin line 1", needle],
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("bad.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\": \"a\", \"response\": \"b\"}\n{\"prompt\": \"a\",\n",
    )
    .unwrap();
    let out = rrlhf()
        .args(["sft", "--out"])
        .arg(dir.path().join("o"))
        .arg("--model")
        .arg(&f.model)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    fails_naming(out, &["bad.jsonl:2"]);
}

#[test]
fn unknown_values_are_rejected() {
    let f = fixture();
    let out = rrlhf()
        .args([
            "model",
            "init",
            "--arch",
            "gpt2",
            "--out",
            "/tmp/x",
            "--tokenizer",
        ])
        .arg(&f.tokenizer)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("gpt2"));
    let out = rrlhf()
        .args([
            "model", "generate", "--prompt", "hi", "--device", "tpu:0", "--model",
        ])
        .arg(&f.model)
        .output()
        .unwrap();
    fails_naming(out, &["tpu:0"]);
    let out = rrlhf()
        .args([
            "model", "generate", "--prompt", "hi", "--top-p", "0", "--model",
        ])
        .arg(&f.model)
        .output()
        .unwrap();
    fails_naming(out, &["top_p"]);
    // A model directory without a tokenizer cannot generate text.
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(f.model.join(file), dir.path().join(file)).unwrap();
    }
    let out = rrlhf()
        .args(["model", "generate", "--prompt", "hi", "--model"])
        .arg(dir.path())
        .output()
        .unwrap();
    fails_naming(out, &["tokenizer"]);
}

/// A data-parallel rank without its group's store, or with an unknown backend, is refused at
/// start with the setting named (before any rendezvous could hang).
#[test]
fn data_parallel_settings_are_named() {
    let f = fixture();
    let serve = |env: &[(&str, &str)]| {
        rrlhf()
            .args(["serve", "actor", "--addr", "127.0.0.1:0", "--model"])
            .arg(&f.model)
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let out = serve(&[("RRLHF__SERVER__WORLD_SIZE", "2")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server.store_addr"), "{stderr}");
    let out = serve(&[
        ("RRLHF__SERVER__WORLD_SIZE", "2"),
        ("RRLHF__SERVER__STORE_ADDR", "127.0.0.1:1"),
        ("RRLHF__SERVER__DIST_BACKEND", "mpi"),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("server.dist_backend") && stderr.contains("mpi"),
        "{stderr}"
    );
}

/// `rrlhf run --lambda` with a config whose strategy has no λ used to be ignored without a
/// word; it is an error naming both, before any stage runs. A config value out of range
/// (here the rollout temperature) is named the same way.
#[test]
fn run_flags_that_contradict_the_config_are_named_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ppo.toml");
    std::fs::write(&cfg, "[objective]\nstrategy = \"min\"\n").unwrap();
    let out = rrlhf()
        .args([
            "run",
            "--data",
            "/nonexistent/data.jsonl",
            "--lambda",
            "0.9",
            "--out",
        ])
        .arg(dir.path().join("out"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    fails_naming(
        out,
        &["--lambda 0.9", "objective.strategy `min`", "ppo.toml"],
    );
    assert!(!dir.path().join("out").exists(), "nothing ran");
    std::fs::write(&cfg, "[sampling]\ntemperature = 80.0\n").unwrap();
    let out = rrlhf()
        .args(["run", "--data", "/nonexistent/data.jsonl", "--out"])
        .arg(dir.path().join("out"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    fails_naming(out, &["sampling.temperature", "got 80"]);
}
