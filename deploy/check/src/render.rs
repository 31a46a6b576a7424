//! A small Kustomize: enough for `deploy/k8s`, and an error for anything it does not know.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_yaml::{Mapping, Value};

fn load_docs(path: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc).with_context(|| format!("parsing {}", path.display()))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

use serde::Deserialize as _;

fn str_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_sequence)
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A generated ConfigMap's data, from `files` (key = file name) and `literals` (`k=v`).
fn generated(dir: &Path, g: &Value) -> Result<BTreeMap<String, String>> {
    let mut data = BTreeMap::new();
    for f in str_list(g.get("files")) {
        let path = dir.join(&f);
        let key = Path::new(&f)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or(f.clone());
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("configMapGenerator file {}", path.display()))?;
        data.insert(key, text);
    }
    for l in str_list(g.get("literals")) {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("literal `{l}` is not key=value"))?;
        data.insert(k.to_owned(), v.to_owned());
    }
    Ok(data)
}

fn config_map(name: &str, data: &BTreeMap<String, String>) -> Value {
    let mut m = Mapping::new();
    m.insert("apiVersion".into(), "v1".into());
    m.insert("kind".into(), "ConfigMap".into());
    let mut meta = Mapping::new();
    meta.insert("name".into(), name.into());
    m.insert("metadata".into(), Value::Mapping(meta));
    let mut d = Mapping::new();
    for (k, v) in data {
        d.insert(k.as_str().into(), v.as_str().into());
    }
    m.insert("data".into(), Value::Mapping(d));
    Value::Mapping(m)
}

pub fn kind_name(v: &Value) -> (String, String) {
    let s = |x: Option<&Value>| x.and_then(Value::as_str).unwrap_or_default().to_owned();
    (
        s(v.get("kind")),
        s(v.get("metadata").and_then(|m| m.get("name"))),
    )
}

const KNOWN: [&str; 8] = [
    "apiVersion",
    "kind",
    "namespace",
    "resources",
    "replicas",
    "configMapGenerator",
    "generatorOptions",
    "patches",
];

/// The resources a Kustomization directory renders to.
pub fn render(dir: &Path) -> Result<Vec<Value>> {
    let k = load_docs(&dir.join("kustomization.yaml"))?
        .into_iter()
        .next()
        .with_context(|| format!("{}: empty kustomization.yaml", dir.display()))?;
    let map = k
        .as_mapping()
        .context("kustomization.yaml is not a mapping")?;
    for key in map.keys().filter_map(Value::as_str) {
        if !KNOWN.contains(&key) || key == "patches" {
            bail!(
                "{}: kustomization field `{key}` is not supported by this checker",
                dir.display()
            );
        }
    }
    let hash_off = k
        .get("generatorOptions")
        .and_then(|g| g.get("disableNameSuffixHash"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut out: Vec<Value> = Vec::new();
    for r in str_list(k.get("resources")) {
        let p = dir.join(&r);
        if p.is_dir() {
            out.extend(render(&p)?);
        } else {
            out.extend(load_docs(&p)?);
        }
    }
    if let Some(gens) = k.get("configMapGenerator").and_then(Value::as_sequence) {
        anyhow::ensure!(
            hash_off,
            "{}: generated names must be stable (disableNameSuffixHash: true)",
            dir.display()
        );
        for g in gens {
            let name = g
                .get("name")
                .and_then(Value::as_str)
                .context("configMapGenerator without a name")?;
            let data = generated(dir, g)?;
            let behavior = g
                .get("behavior")
                .and_then(Value::as_str)
                .unwrap_or("create");
            let existing = out
                .iter()
                .position(|v| kind_name(v) == ("ConfigMap".into(), name.into()));
            match (behavior, existing) {
                ("create", None) => out.push(config_map(name, &data)),
                ("replace", Some(i)) => out[i] = config_map(name, &data),
                ("merge", Some(i)) => {
                    let mut merged: BTreeMap<String, String> = out[i]
                        .get("data")
                        .and_then(Value::as_mapping)
                        .map(|m| {
                            m.iter()
                                .filter_map(|(k, v)| {
                                    Some((k.as_str()?.to_owned(), v.as_str()?.to_owned()))
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    merged.extend(data);
                    out[i] = config_map(name, &merged);
                }
                (b, e) => bail!(
                    "{}: configMapGenerator `{name}` with behavior `{b}` {}",
                    dir.display(),
                    if e.is_some() {
                        "but it already exists"
                    } else {
                        "but there is nothing to change"
                    }
                ),
            }
        }
    }
    if let Some(reps) = k.get("replicas").and_then(Value::as_sequence) {
        for r in reps {
            let name = r
                .get("name")
                .and_then(Value::as_str)
                .context("replicas entry without a name")?;
            let count = r
                .get("count")
                .and_then(Value::as_u64)
                .context("replicas entry without a count")?;
            let target = out
                .iter_mut()
                .find(|v| {
                    let (kind, n) = kind_name(v);
                    n == name && ["StatefulSet", "Deployment"].contains(&kind.as_str())
                })
                .with_context(|| {
                    format!("{}: replicas for unknown workload `{name}`", dir.display())
                })?;
            target["spec"]["replicas"] = Value::from(count);
        }
    }
    if let Some(ns) = k.get("namespace").and_then(Value::as_str) {
        for v in &mut out {
            if let Some(meta) = v.get_mut("metadata").and_then(Value::as_mapping_mut) {
                meta.insert("namespace".into(), ns.into());
            }
        }
    }
    Ok(out)
}
