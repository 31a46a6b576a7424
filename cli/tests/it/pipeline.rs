//! `rrlhf run` end to end at toy scale (every stage, PPO over the four services on loopback),
//! its reuse and resume on a second call, a stop on request through its REST API, and `rrlhf orchestrate`'s config errors.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;

use crate::fixture::{hh_subset, ok, rrlhf};

/// Every line of a JSONL file (a run's `metrics.jsonl`).
fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn metrics_lines(dir: &Path) -> Vec<serde_json::Value> {
    jsonl(&dir.join("ppo/metrics.jsonl"))
}

/// The string field `key` of every element of the array `v`.
fn each<'a>(v: &'a serde_json::Value, key: &str) -> Vec<&'a str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x[key].as_str().unwrap())
        .collect()
}

#[test]
fn run_builds_every_stage_then_reuses_them_and_resumes_ppo() {
    let root = tempfile::tempdir().unwrap();
    let data = hh_subset(root.path(), 300);
    let out = root.path().join("run");
    let args = |ppo_steps: &str| {
        let mut c = rrlhf();
        c.args(["run", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .args(["--vocab-size", "300", "--sft-steps", "6", "--rm-steps", "6"])
            .args(["--batch-size", "4", "--max-len", "96", "--samples", "1"])
            .args([
                "--ppo-batch",
                "8",
                "--max-new-tokens",
                "6",
                "--ppo-steps",
                ppo_steps,
            ]);
        c
    };
    let stdout = ok(args("2").output().unwrap());
    assert!(stdout.contains("ppo          2 steps of 8"), "{stdout}");
    // Standard and robust PPO from the same start, side by side.
    assert!(stdout.contains("standard (nominal)"), "{stdout}");
    assert!(stdout.contains("head disagreement (std)"), "{stdout}");
    let m = metrics_lines(&out);
    assert_eq!(m.len(), 2);
    assert_eq!(m[1]["strategy"], "tradeoff:0.4");
    let standard = jsonl(&out.join("ppo-standard/metrics.jsonl"));
    assert_eq!(standard.len(), 2);
    assert_eq!(standard[1]["strategy"], "nominal");
    // Same seed: the first step's prompts and samples are the same, so is its nominal reward.
    assert_eq!(
        standard[0]["rewards"]["nominal"],
        m[0]["rewards"]["nominal"]
    );
    for f in [
        "ppo/report.md",
        "ppo/plots/rewards.png",
        "ppo/checkpoints/latest",
        "summary.json",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["ppo"]["last"]["step"], 2);
    assert_eq!(summary["ppo_standard"]["last"]["step"], 2);
    assert_eq!(summary["standard_samples"].as_array().unwrap().len(), 1);

    // Again with more PPO steps: every stage is reused and PPO continues from step 2.
    let second = args("3").output().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr).into_owned();
    ok(second);
    assert!(stderr.contains("reusing the SFT model"), "{stderr}");
    assert!(stderr.contains("reusing the BRME"), "{stderr}");
    let steps: Vec<u64> = metrics_lines(&out)
        .iter()
        .map(|m| m["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![1, 2, 3]);

    // A stop through the REST API (the dashboard's button) is the user's decision: the run
    // ends with a checkpoint, `rrlhf run` goes on to its samples and summary and exits 0.
    let mut third = args("200");
    third.args(["--no-standard", "--rest", "127.0.0.1:0"]);
    let mut child = third
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let addr = loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "no REST address in {seen}"
        );
        seen.push_str(&line);
        if let Some(rest) = line.split("REST control API on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let mut conn = TcpStream::connect(&addr).unwrap();
    conn.write_all(
        format!("POST /v1/runs/ppo/stop HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    stderr.read_to_string(&mut seen).unwrap();
    let third = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&third.stdout);
    assert!(third.status.success(), "{seen}\n{stdout}");
    assert!(seen.contains("stopped on request"), "{seen}");
    assert!(stdout.contains("stopped on request after step"), "{stdout}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["ppo"]["stopped_on_request"], true);
    let last = summary["ppo"]["last"]["step"].as_u64().unwrap();
    assert!((3..200).contains(&last), "stopped at {last}");
}

#[test]
fn orchestrate_names_the_bad_config_field() {
    let root = tempfile::tempdir().unwrap();
    for (toml, needle) in [
        ("[objective]\nstrategy = \"bogus\"\n", "objective.strategy"),
        ("[run]\nstepz = 3\n", "stepz"),
        (
            "[endpoints]\nactor = [\"localhost:1\"]\n",
            "endpoints.actor",
        ),
        ("[ppo]\ngamma = 2.0\n", "ppo.gamma"),
        (
            "[telemetry]\notlp_endpoint = \"nowhere\"\n",
            "telemetry.otlp_endpoint",
        ),
    ] {
        let path = root.path().join("o.toml");
        std::fs::write(&path, toml).unwrap();
        let out = rrlhf()
            .args(["orchestrate", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{toml}");
        assert!(stderr.contains(needle), "{toml}: {stderr}");
    }
}

#[test]
fn toy_writes_json_tables_and_heatmaps() {
    let out = tempfile::tempdir().unwrap();
    let stdout = ok(rrlhf()
        .args([
            "toy",
            "--seeds",
            "2",
            "--rm-steps",
            "20",
            "--ppo-iters",
            "3",
            "--json",
            "--lambdas",
            "0.4",
        ])
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let names = each(&v["conditions"], "name");
    // Standard, the deep ensemble under λ = 0.4, mean and UWO, and the shared-trunk multi-head
    // RM under the same.
    assert_eq!(names.len(), 10, "{names:?}");
    for n in ["standard (λ=1)", "deep-ens mean", "multi-head λ=0.4"] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    assert!(
        names.iter().any(|n| n.starts_with("deep-ens UWO")),
        "{names:?}"
    );
    assert_eq!(v["seeds"].as_array().unwrap().len(), 2);
    for f in [
        "toy.json",
        "toy.md",
        "toy-rms.png",
        "toy-actors.png",
        "toy-heads.png",
    ] {
        assert!(out.path().join(f).exists(), "{f}");
    }
}

#[test]
fn overopt_runs_every_condition_and_writes_the_tables() {
    let root = tempfile::tempdir().unwrap();
    let data = hh_subset(root.path(), 80);
    let out = root.path().join("overopt");
    let args_to = |c: &mut std::process::Command, out: &Path, conditions: &str| {
        c.args(["experiment", "overopt", "--sft"])
            .arg(&crate::fixture::fixture().model)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(out)
            .args([
                "--pairs",
                "40",
                "--rm-steps",
                "4",
                "--seeds",
                "2",
                "--steps",
                "2",
            ])
            .args([
                "--early-step",
                "1",
                "--batch",
                "4",
                "--max-new-tokens",
                "4",
                "--max-len",
                "128",
            ])
            .args(["--heads", "2", "--heldout", "20", "--tower-layers", "1"])
            .args(["--conditions", conditions]);
    };
    let args = |c: &mut std::process::Command| {
        args_to(
            c,
            &out,
            "diverse/nominal,fused/tradeoff:0.4,ensemble/random_min",
        )
    };
    let mut c = rrlhf();
    args(&mut c);
    let stdout = ok(c.output().unwrap());
    assert!(stdout.contains("Table 3 shape"), "{stdout}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("overopt.json")).unwrap()).unwrap();
    let curves = v["curves"].as_array().unwrap();
    assert_eq!(curves.len(), 6, "3 conditions × 2 seeds");
    for c in curves {
        let points = c["points"].as_array().unwrap();
        assert_eq!(points.len(), 2);
        assert!(
            points
                .iter()
                .all(|p| p["gold"].as_f64().is_some_and(f64::is_finite))
        );
    }
    let rows = v["tables"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for r in rows {
        assert_eq!(r["late"]["seeds"], 2);
        assert_eq!(
            r["paired_late"].is_null(),
            r["condition"] == "diverse/nominal"
        );
    }
    // A fresh proxy per seed, each evaluated against gold.
    let annotation: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("proxy/s1/annotation.json")).unwrap(),
    )
    .unwrap();
    let agreement = annotation["agreement"].as_f64().unwrap();
    assert!((0.5..=1.0).contains(&agreement), "{annotation}");
    for f in [
        "overopt.md",
        "gold.png",
        "proxy.png",
        "kl.png",
        "gold-sqrt-kl.png",
        "testbed.json",
        "proxy/s0/rm-diverse/model.safetensors",
        "proxy/s1/rm-ensemble/model.safetensors",
        "proxy/s1/rm-member1/model.safetensors",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("proxy/s0/eval.json")).unwrap())
            .unwrap();
    for proxy in ["single", "diverse", "ensemble"] {
        assert!(eval[proxy]["score_secs"].as_f64().is_some(), "{eval}");
    }
    assert!(
        eval["diverse"]["disagreement"]["mean"].as_f64().is_some(),
        "{eval}"
    );
    assert!(
        v["matched_kl"]["rows"].as_array().unwrap().len() == 3,
        "{v}"
    );
    // The fused condition scored with both services and recorded each source.
    let fused = jsonl(&out.join("runs/fused-tradeoff_0.4-s1/metrics.jsonl"));
    assert_eq!(each(&fused[0]["sources"], "name"), ["diverse", "ensemble"]);
    assert!(out.join("proxy/s1/fusion.json").exists());
    // A second call reuses the proxy and the finished runs.
    let mut again = rrlhf();
    args(&mut again);
    let second = again.output().unwrap();
    assert!(String::from_utf8_lossy(&second.stderr).contains("reusing"));
    ok(second);

    // New conditions on the same proxies, with β steered to a KL target instead of fixed.
    let steered = root.path().join("kl-target");
    let mut c = rrlhf();
    args_to(&mut c, &steered, "diverse/nominal");
    c.arg("--proxies")
        .arg(out.join("proxy"))
        .args(["--kl-target", "0.5", "--kl-horizon", "4"]);
    let third = c.output().unwrap();
    assert!(String::from_utf8_lossy(&third.stderr).contains("reusing"));
    ok(third);
    assert!(
        !steered.join("proxy").exists(),
        "the proxies are reused, not rebuilt"
    );
    let testbed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(steered.join("testbed.json")).unwrap())
            .unwrap();
    assert_eq!(testbed["kl"]["kind"], "adaptive", "{testbed}");
    assert_eq!(testbed["kl"]["target"], 0.5, "{testbed}");
    let betas: Vec<f64> = jsonl(&steered.join("runs/diverse-nominal-s0/metrics.jsonl"))
        .iter()
        .map(|m| m["beta"].as_f64().unwrap())
        .collect();
    assert_ne!(betas[0], betas[1], "β follows the KL: {betas:?}");
}
