//! A `rrlhf launch` plan places the same training setup as the overlay it mirrors: each actor
//! and critic process's group size equals the overlay's replicas, and the settings the GPU
//! arithmetic depends on (`engine.dtype`, `server.zero_stage`, `activation_checkpointing`),
//! which a plan sets through `RRLHF__…` environment variables over the service defaults, equal
//! the overlay's service configs.

use std::path::Path;

use anyhow::{Context, Result, ensure};

use crate::render::kind_name;

/// One setting: its name in a service config, the plan's environment variable, and the
/// service default when neither sets it.
const SETTINGS: [(&str, &str, &str); 3] = [
    ("engine.dtype", "RRLHF__ENGINE__DTYPE", "f32"),
    ("server.zero_stage", "RRLHF__SERVER__ZERO_STAGE", "0"),
    (
        "activation_checkpointing",
        "RRLHF__ACTIVATION_CHECKPOINTING",
        "false",
    ),
];

/// A setting of a service config as text (`"bf16"`, `2`, `true` → `bf16`, `2`, `true`).
fn config_value(cfg: &toml::Value, dotted: &str) -> Option<String> {
    let v = dotted.split('.').try_fold(cfg, |v, k| v.get(k))?;
    Some(match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// Checks the plan at `plan` against the overlay directory `overlay`.
pub fn check_plan_matches(plan: &Path, overlay: &Path) -> Result<()> {
    let docs = crate::render(overlay)?;
    let placement = crate::validate(&docs)?;
    let configs = docs
        .iter()
        .find(|d| kind_name(d) == ("ConfigMap".into(), "rrlhf-config".into()))
        .context("the overlay has no rrlhf-config")?;
    let text = std::fs::read_to_string(plan).with_context(|| plan.display().to_string())?;
    let parsed: toml::Value = text.parse().with_context(|| plan.display().to_string())?;
    let processes = parsed
        .get("process")
        .and_then(toml::Value::as_array)
        .with_context(|| format!("{}: no [[process]]", plan.display()))?;
    for svc in ["actor", "critic"] {
        let file = format!("{svc}.toml");
        let cfg: toml::Value = configs["data"][file.as_str()]
            .as_str()
            .with_context(|| format!("rrlhf-config has no {file}"))?
            .parse()
            .with_context(|| file.clone())?;
        let replicas = placement.replicas.get(svc).copied().unwrap_or(0);
        for p in processes
            .iter()
            .filter(|p| p.get("service").and_then(toml::Value::as_str) == Some(svc))
        {
            let name = p.get("name").and_then(toml::Value::as_str).unwrap_or("?");
            let world = p
                .get("world_size")
                .and_then(toml::Value::as_integer)
                .unwrap_or(1) as u64;
            ensure!(
                world == replicas,
                "{}: {name}.world_size = {world}, the overlay deploys {replicas} {svc} pods",
                plan.display()
            );
            for (key, var, default) in SETTINGS {
                let planned = p
                    .get("env")
                    .and_then(|e| e.get(var))
                    .and_then(toml::Value::as_str)
                    .unwrap_or(default);
                let deployed = config_value(&cfg, key).unwrap_or_else(|| default.to_owned());
                ensure!(
                    planned == deployed,
                    "{}: {name} runs with {key} = {planned} ({var}), the overlay's {file} with \
                     {deployed}",
                    plan.display()
                );
            }
        }
    }
    Ok(())
}
