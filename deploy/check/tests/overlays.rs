//! The shipped overlays render and deploy what they claim: the paper's 10/10/2/2 on 3 × 8 GPUs,
//! and a single 8-GPU node; every reference resolves and every probe hits a real port. When
//! `kubectl` is installed, its own `kustomize` must render the same objects and replicas.

use std::path::{Path, PathBuf};

use rrlhf_deploy_check::{render, validate};

fn k8s() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s")
}

fn gpus(overlay: &str) -> Vec<(String, u64)> {
    let docs = render(&k8s().join(overlay)).unwrap();
    validate(&docs).unwrap().gpus.into_iter().collect()
}

#[test]
fn three_node_overlay_is_the_papers_placement() {
    let g = gpus("overlays/three-node-h800");
    let get = |c: &str| g.iter().find(|(n, _)| n == c).map(|x| x.1);
    assert_eq!(
        (get("actor"), get("critic"), get("reference"), get("reward")),
        (Some(10), Some(10), Some(2), Some(2))
    );
    assert_eq!(g.iter().map(|x| x.1).sum::<u64>(), 24, "3 nodes × 8 GPUs");
    assert_eq!(get("orchestrator"), Some(0));
}

#[test]
fn single_node_overlay_fits_eight_gpus() {
    let total: u64 = gpus("overlays/single-node-8gpu").iter().map(|x| x.1).sum();
    assert_eq!(total, 8);
}

#[test]
fn base_renders_and_validates() {
    let docs = render(&k8s().join("base")).unwrap();
    let p = validate(&docs).unwrap();
    assert_eq!(p.total_gpus(), 4);
}

#[test]
fn a_dangling_reference_is_named() {
    let mut docs = render(&k8s().join("base")).unwrap();
    docs.retain(|d| {
        rrlhf_deploy_check::render::kind_name(d) != ("Secret".into(), "rrlhf-auth".into())
    });
    let err = validate(&docs).unwrap_err().to_string();
    assert!(err.contains("rrlhf-auth"), "{err}");
}

#[test]
fn kubectl_kustomize_agrees_when_installed() {
    let Ok(out) = std::process::Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
    else {
        eprintln!("kubectl not installed: the cross-check against real Kustomize is skipped");
        return;
    };
    if !out.status.success() {
        return;
    }
    for overlay in [
        "base",
        "overlays/three-node-h800",
        "overlays/single-node-8gpu",
    ] {
        let dir = k8s().join(overlay);
        let rendered = std::process::Command::new("kubectl")
            .arg("kustomize")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            rendered.status.success(),
            "{}",
            String::from_utf8_lossy(&rendered.stderr)
        );
        let theirs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_slice(&rendered.stdout)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        let ours = render(&dir).unwrap();
        let key = |v: &serde_yaml::Value| {
            let (k, n) = rrlhf_deploy_check::render::kind_name(v);
            (k, n, v["spec"]["replicas"].as_u64())
        };
        let mut a: Vec<_> = theirs.iter().map(key).collect();
        let mut b: Vec<_> = ours.iter().map(key).collect();
        a.sort();
        b.sort();
        assert_eq!(a, b, "{overlay}");
        // Same ConfigMap contents too.
        for t in theirs.iter().filter(|v| v["kind"] == "ConfigMap") {
            let o = ours
                .iter()
                .find(|v| {
                    rrlhf_deploy_check::render::kind_name(v)
                        == rrlhf_deploy_check::render::kind_name(t)
                })
                .unwrap();
            assert_eq!(
                t["data"],
                o["data"],
                "{overlay}: {:?}",
                rrlhf_deploy_check::render::kind_name(t)
            );
        }
    }
}

#[test]
fn a_training_config_without_the_arithmetics_settings_is_named() {
    let mut docs = render(&k8s().join("base")).unwrap();
    for d in docs.iter_mut() {
        if rrlhf_deploy_check::render::kind_name(d) == ("ConfigMap".into(), "rrlhf-config".into()) {
            let text = d["data"]["critic.toml"].as_str().unwrap().to_owned();
            d["data"]["critic.toml"] = text.replace("activation_checkpointing = true", "").into();
        }
    }
    let err = validate(&docs).unwrap_err().to_string();
    assert!(
        err.contains("critic.toml: activation_checkpointing"),
        "{err}"
    );
}

/// The ZeRO stage, micro-batch and checkpointing of the three-node overlay are what
/// docs/deployment.md's 8B arithmetic needs; changing one so that a rank no longer fits names
/// the setting.
#[test]
fn a_layout_that_no_longer_fits_its_model_is_named() {
    let overlay = k8s().join("overlays/three-node-h800");
    let docs = render(&overlay).unwrap();
    validate(&docs).unwrap();
    let edit = |file: &str, from: &str, to: &str| {
        let mut docs = docs.clone();
        for d in docs.iter_mut() {
            if rrlhf_deploy_check::render::kind_name(d)
                == ("ConfigMap".into(), "rrlhf-config".into())
            {
                let text = d["data"][file].as_str().unwrap().to_owned();
                assert!(text.contains(from), "{file} has `{from}`");
                d["data"][file] = text.replace(from, to).into();
            }
        }
        validate(&docs).unwrap_err().to_string()
    };
    let err = edit("actor.toml", "zero_stage = 2", "zero_stage = 0");
    assert!(
        err.contains("actor: a llama-3-8b rank needs ≈ 166 GB")
            && err.contains("actor.toml server.zero_stage = 0"),
        "{err}"
    );
    let err = edit(
        "orchestrator.toml",
        "[ppo.critic]\nmicro_batch_size = 2",
        "[ppo.critic]\nmicro_batch_size = 16",
    );
    assert!(
        err.contains("critic:") && err.contains("ppo.critic.micro_batch_size giving 13"),
        "{err}"
    );
}

/// The `rrlhf launch` plans set what their overlays deploy.
#[test]
fn the_plans_mirror_their_overlays() {
    let plans = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plans");
    for name in ["three-node-h800", "single-node-8gpu"] {
        rrlhf_deploy_check::plan::check_plan_matches(
            &plans.join(format!("{name}.toml")),
            &k8s().join("overlays").join(name),
        )
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    }
    // A plan whose ranks run another ZeRO stage is named.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(plans.join("single-node-8gpu.toml")).unwrap();
    let edited = text.replace(
        "RRLHF__SERVER__ZERO_STAGE = \"2\"",
        "RRLHF__SERVER__ZERO_STAGE = \"1\"",
    );
    std::fs::write(dir.path().join("p.toml"), edited).unwrap();
    let err = rrlhf_deploy_check::plan::check_plan_matches(
        &dir.path().join("p.toml"),
        &k8s().join("overlays/single-node-8gpu"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("actor-0 runs with server.zero_stage = 1"),
        "{err}"
    );
}
