//! Checks on a rendered deployment: what each service gets (GPUs, ranks), that every reference
//! resolves, that probes and Services point at real ports and pods, and that the orchestrator's
//! endpoints name exactly the pods that exist.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, bail, ensure};
use serde_yaml::Value;

use crate::render::kind_name;

/// GPUs and replicas per component, as deployed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Placement {
    pub replicas: BTreeMap<String, u64>,
    pub gpus: BTreeMap<String, u64>,
}

impl Placement {
    pub fn total_gpus(&self) -> u64 {
        self.gpus.values().sum()
    }
}

fn s(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str)
}

fn seq(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_sequence).map_or(&[], Vec::as_slice)
}

fn labels(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

fn gpu_limit(c: &Value) -> u64 {
    let r = &c["resources"]["limits"]["nvidia.com/gpu"];
    r.as_u64()
        .or_else(|| r.as_str().and_then(|x| x.parse().ok()))
        .unwrap_or(0)
}

/// Validates `docs`; returns the placement it deploys.
pub fn validate(docs: &[Value]) -> Result<Placement> {
    let names: BTreeSet<(String, String)> = docs.iter().map(kind_name).collect();
    let has = |kind: &str, name: &str| names.contains(&(kind.to_owned(), name.to_owned()));
    let config_maps: BTreeMap<String, &Value> = docs
        .iter()
        .filter(|d| kind_name(d).0 == "ConfigMap")
        .map(|d| (kind_name(d).1, d))
        .collect();
    let mut placement = Placement::default();
    let mut workloads: Vec<(String, &Value, u64)> = Vec::new();

    for d in docs {
        let (kind, name) = kind_name(d);
        if !["StatefulSet", "Deployment"].contains(&kind.as_str()) {
            continue;
        }
        let replicas = d["spec"]["replicas"].as_u64().unwrap_or(1);
        let pod = &d["spec"]["template"];
        let pod_labels = labels(pod["metadata"].get("labels"));
        let selector = labels(d["spec"]["selector"].get("matchLabels"));
        ensure!(
            selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
            "{kind} {name}: selector {selector:?} does not match its pod labels {pod_labels:?}"
        );
        if kind == "StatefulSet" {
            let svc = s(d["spec"].get("serviceName"))
                .with_context(|| format!("StatefulSet {name}: no serviceName"))?;
            ensure!(
                has("Service", svc),
                "StatefulSet {name}: serviceName `{svc}` is not a Service"
            );
        }
        let containers = seq(pod["spec"].get("containers"));
        ensure!(!containers.is_empty(), "{kind} {name}: no containers");
        let mut gpus = 0;
        for c in containers {
            let cname = s(c.get("name")).unwrap_or("?");
            let ports: BTreeSet<u64> = seq(c.get("ports"))
                .iter()
                .filter_map(|p| p["containerPort"].as_u64())
                .collect();
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                let Some(p) = c.get(probe) else { continue };
                let port = p["grpc"]["port"]
                    .as_u64()
                    .or_else(|| p["httpGet"]["port"].as_u64());
                let port = port.with_context(|| {
                    format!("{name}/{cname}: {probe} has no grpc or httpGet port")
                })?;
                ensure!(
                    ports.contains(&port),
                    "{name}/{cname}: {probe} port {port} is not a container port {ports:?}"
                );
            }
            for e in seq(c.get("env")) {
                let from = &e["valueFrom"];
                if let Some(n) = s(from["secretKeyRef"].get("name")) {
                    ensure!(
                        has("Secret", n),
                        "{name}/{cname}: env from unknown Secret `{n}`"
                    );
                }
                if let Some(n) = s(from["configMapKeyRef"].get("name")) {
                    let key = s(from["configMapKeyRef"].get("key")).unwrap_or_default();
                    let cm = config_maps.get(n).with_context(|| {
                        format!("{name}/{cname}: env from unknown ConfigMap `{n}`")
                    })?;
                    ensure!(
                        cm["data"].get(key).is_some(),
                        "{name}/{cname}: ConfigMap `{n}` has no key `{key}`"
                    );
                }
            }
            if kind == "StatefulSet" && c.get("args").is_some() {
                // Args of the form `serve <svc> --config /etc/rrlhf/<file>`: the file must be in the ConfigMap.
                let args: Vec<&str> = seq(c.get("args"))
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                if let Some(i) = args.iter().position(|a| *a == "--config") {
                    let file = args
                        .get(i + 1)
                        .and_then(|p| p.rsplit('/').next())
                        .unwrap_or_default();
                    ensure!(
                        config_maps
                            .get("rrlhf-config")
                            .is_some_and(|cm| cm["data"].get(file).is_some()),
                        "{name}/{cname}: --config {file} is not in ConfigMap rrlhf-config"
                    );
                }
            }
            gpus += gpu_limit(c);
        }
        for vol in seq(pod["spec"].get("volumes")) {
            if let Some(n) = s(vol["configMap"].get("name")) {
                ensure!(
                    has("ConfigMap", n),
                    "{name}: volume from unknown ConfigMap `{n}`"
                );
            }
            if let Some(n) = s(vol["secret"].get("secretName")) {
                let optional = vol["secret"]["optional"].as_bool().unwrap_or(false);
                ensure!(
                    optional || has("Secret", n),
                    "{name}: volume from unknown Secret `{n}`"
                );
            }
            if let Some(n) = s(vol["persistentVolumeClaim"].get("claimName")) {
                ensure!(
                    has("PersistentVolumeClaim", n),
                    "{name}: unknown PersistentVolumeClaim `{n}`"
                );
            }
        }
        let component = pod_labels
            .get("app.kubernetes.io/component")
            .cloned()
            .unwrap_or(name.clone());
        placement.replicas.insert(component.clone(), replicas);
        placement.gpus.insert(component.clone(), replicas * gpus);
        workloads.push((name, pod, replicas));
    }

    // Services select existing pods on ports those pods expose.
    for d in docs.iter().filter(|d| kind_name(d).0 == "Service") {
        let name = kind_name(d).1;
        let selector = labels(d["spec"].get("selector"));
        let targets: Vec<&(String, &Value, u64)> = workloads
            .iter()
            .filter(|(_, pod, _)| {
                let l = labels(pod["metadata"].get("labels"));
                selector.iter().all(|(k, v)| l.get(k) == Some(v))
            })
            .collect();
        ensure!(
            !targets.is_empty(),
            "Service {name}: selector {selector:?} matches no pods"
        );
        for p in seq(d["spec"].get("ports")) {
            let port = p["targetPort"]
                .as_u64()
                .or_else(|| p["port"].as_u64())
                .unwrap_or(0);
            for (w, pod, _) in &targets {
                let exposed = seq(pod["spec"].get("containers"))
                    .iter()
                    .flat_map(|c| seq(c.get("ports")))
                    .any(|cp| cp["containerPort"].as_u64() == Some(port));
                ensure!(exposed, "Service {name}: port {port} is not exposed by {w}");
            }
        }
    }

    // Data-parallel group sizes equal the ranks deployed.
    if let Some(p) = config_maps.get("rrlhf-placement") {
        for svc in ["actor", "critic"] {
            let ws: u64 = s(p["data"].get(format!("{svc}_world_size").as_str()))
                .and_then(|x| x.parse().ok())
                .with_context(|| format!("rrlhf-placement: no {svc}_world_size"))?;
            let r = placement.replicas.get(svc).copied().unwrap_or(0);
            ensure!(
                ws == r,
                "rrlhf-placement: {svc}_world_size = {ws} but {r} {svc} pods"
            );
        }
    }

    // The training services run as the GPU arithmetic in docs/deployment.md assumes: bf16
    // weights (with the optimizer's fp32 masters) and activation checkpointing.
    for svc in ["actor", "critic"] {
        let file = format!("{svc}.toml");
        let Some(text) = config_maps
            .get("rrlhf-config")
            .and_then(|cm| s(cm["data"].get(file.as_str())))
        else {
            continue;
        };
        let cfg: toml::Value = text.parse().with_context(|| file.clone())?;
        let dtype = cfg
            .get("engine")
            .and_then(|e| e.get("dtype"))
            .and_then(toml::Value::as_str);
        ensure!(
            dtype == Some("bf16"),
            "{file}: engine.dtype = {dtype:?}; the deployment's memory arithmetic assumes \"bf16\""
        );
        let checkpointing = cfg
            .get("activation_checkpointing")
            .and_then(toml::Value::as_bool);
        ensure!(
            checkpointing == Some(true),
            "{file}: activation_checkpointing = {checkpointing:?}; the deployment's memory \
             arithmetic assumes true"
        );
    }

    // A placement that says which model it is sized for must fit it: each training rank's
    // memory by docs/deployment.md's arithmetic, from the settings it depends on.
    if let Some(p) = config_maps.get("rrlhf-placement") {
        if let Some(model) = s(p["data"].get("sized_for")) {
            let gpu_gb: f64 = s(p["data"].get("gpu_memory_gb"))
                .and_then(|x| x.parse().ok())
                .context("rrlhf-placement: sized_for needs gpu_memory_gb")?;
            let configs = config_maps
                .get("rrlhf-config")
                .context("rrlhf-placement: sized_for needs the rrlhf-config ConfigMap")?;
            for svc in ["actor", "critic"] {
                crate::memory::check_rank_fits(
                    svc,
                    model,
                    gpu_gb,
                    placement.replicas.get(svc).copied().unwrap_or(0),
                    |file| s(configs["data"].get(file)).map(str::to_owned),
                )?;
            }
        }
    }

    // The orchestrator's endpoints are exactly the pods, by their stable names and ports.
    let orch = config_maps
        .get("rrlhf-config")
        .and_then(|cm| s(cm["data"].get("orchestrator.toml")))
        .context("rrlhf-config has no orchestrator.toml")?;
    let cfg: toml::Value = orch.parse().context("orchestrator.toml")?;
    for (svc, pod, replicas) in &workloads {
        let Some(list) = cfg
            .get("endpoints")
            .and_then(|e| e.get(svc.as_str()))
            .and_then(|l| l.as_array())
        else {
            continue;
        };
        let sts = docs
            .iter()
            .find(|d| kind_name(d) == ("StatefulSet".into(), svc.clone()))
            .with_context(|| format!("endpoints.{svc}: no StatefulSet `{svc}`"))?;
        let headless = s(sts["spec"].get("serviceName")).unwrap_or_default();
        let grpc = seq(pod["spec"].get("containers"))
            .iter()
            .flat_map(|c| seq(c.get("ports")))
            .find(|p| s(p.get("name")) == Some("grpc"))
            .and_then(|p| p["containerPort"].as_u64())
            .with_context(|| format!("{svc}: no port named grpc"))?;
        let expected: Vec<String> = (0..*replicas)
            .map(|i| format!("http://{svc}-{i}.{headless}:{grpc}"))
            .collect();
        let given: Vec<String> = list
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect();
        if given != expected {
            bail!("orchestrator.toml endpoints.{svc} = {given:?}, the pods are {expected:?}");
        }
    }
    Ok(placement)
}
