//! LoRA adapters (Hu et al. 2021) on the decoder's linear layers, in the layout of the `peft`
//! library: for a target module with weight W `[out, in]`, `lora_A.weight` `[r, in]` and
//! `lora_B.weight` `[out, r]`, and output `x·Wᵀ + (α/r)·dropout(x)·Aᵀ·Bᵀ`. A is drawn as PEFT
//! draws it (Kaiming-uniform, bound 1/√in) and B starts at zero, so a fresh adapter changes
//! nothing. Adapters live in the model's `VarStore` next to the module they adapt
//! (`model.layers.0.self_attn.q_proj.lora_A.weight`); the base parameters are frozen, so the
//! optimizer, which takes the trainable variables, holds state for the adapters only.
//!
//! Saved adapters are a PEFT directory: `adapter_config.json` and `adapter_model.safetensors`
//! with keys `base_model.model.<module>.lora_A.weight`, which `PeftModel.from_pretrained` loads.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;
use tch::{Kind, Tensor, nn};

use crate::error::{ModelError, Result};

pub use rrlhf_util::lora::{LoraConfig, TARGETABLE};

pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// PEFT's prefix for the wrapped model's tensors.
const PEFT_PREFIX: &str = "base_model.model.";

/// Checks `cfg`, as the model's error.
pub fn validate(cfg: &LoraConfig) -> Result<()> {
    cfg.validate().map_err(ModelError::InvalidInput)
}

/// What the adapted model is, in PEFT's terms: a causal LM (the actor, SFT), or a sequence
/// classifier whose `score` head trains fully beside the adapters (the critic; PEFT's
/// `modules_to_save`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeftTask {
    CausalLm,
    SeqCls,
}

impl PeftTask {
    /// Whether variable `name` belongs in the adapter file: the adapters, and for a sequence
    /// classifier its head.
    pub fn saves(self, name: &str) -> bool {
        is_adapter_tensor(name) || (self == Self::SeqCls && name.starts_with("score."))
    }
}

/// The `adapter_config.json` PEFT reads (`task_type` CAUSAL_LM: the adapted model is a
/// causal LM; `base` is recorded as `base_model_name_or_path`).
pub fn peft_json(cfg: &LoraConfig, base: &str, task: PeftTask) -> serde_json::Value {
    let (task_type, modules_to_save) = match task {
        PeftTask::CausalLm => ("CAUSAL_LM", json!(null)),
        PeftTask::SeqCls => ("SEQ_CLS", json!(["score"])),
    };
    json!({
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base,
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": cfg.target_modules,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": modules_to_save,
        "use_rslora": false,
        "use_dora": false,
    })
}

/// The parsed `adapter_config.json` of `dir`, with its path.
fn adapter_config_json(dir: &Path) -> Result<(PathBuf, serde_json::Value)> {
    let path = dir.join(ADAPTER_CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let v = serde_json::from_str(&text).map_err(|e| ModelError::Config {
        path: path.clone(),
        message: format!("not valid JSON: {e}"),
    })?;
    Ok((path, v))
}

/// Reads an `adapter_config.json` (PEFT's, or ours), refusing what this engine would compute
/// differently (another PEFT type, biases, rsLoRA, DoRA, fan-in/fan-out weights).
pub fn read_peft_config(dir: &Path) -> Result<LoraConfig> {
    let (path, v) = adapter_config_json(dir)?;
    let unsupported =
        |field: &str, value: &serde_json::Value, hint: &str| ModelError::Unsupported {
            path: path.clone(),
            field: field.into(),
            value: value.to_string(),
            hint: hint.into(),
        };
    let expect = |field: &str, ok: &dyn Fn(&serde_json::Value) -> bool, hint: &str| {
        let value = v.get(field).cloned().unwrap_or(serde_json::Value::Null);
        if ok(&value) {
            Ok(())
        } else {
            Err(unsupported(field, &value, hint))
        }
    };
    expect("peft_type", &|x| x == "LORA", "only LoRA adapters")?;
    expect(
        "bias",
        &|x| x.is_null() || x == "none",
        "adapters without bias terms",
    )?;
    for flag in ["use_rslora", "use_dora", "fan_in_fan_out"] {
        expect(flag, &|x| x.is_null() || x == false, "plain LoRA")?;
    }
    let number = |field: &str| {
        v.get(field)
            .and_then(serde_json::Value::as_f64)
            .ok_or_else(|| ModelError::Config {
                path: path.clone(),
                message: format!("missing number `{field}`"),
            })
    };
    let target_modules = match v.get("target_modules") {
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|m| m.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>(),
        _ => None,
    }
    .ok_or_else(|| ModelError::Config {
        path: path.clone(),
        message: "`target_modules` must be a list of module names".into(),
    })?;
    let cfg = LoraConfig {
        rank: number("r")? as i64,
        alpha: number("lora_alpha")?,
        dropout: v
            .get("lora_dropout")
            .and_then(|d| d.as_f64())
            .unwrap_or(0.0),
        target_modules,
    };
    cfg.validate()
        .map_err(|message| ModelError::Config { path, message })?;
    Ok(cfg)
}

/// The base model an adapter directory names (`base_model_name_or_path`; a relative path is
/// taken from the working directory, as `PeftModel` does).
pub fn adapter_base(dir: &Path) -> Result<PathBuf> {
    let (path, v) = adapter_config_json(dir)?;
    v.get("base_model_name_or_path")
        .and_then(serde_json::Value::as_str)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| ModelError::Config {
            path,
            message: "no `base_model_name_or_path`: pass the base model explicitly".into(),
        })
}

/// Whether `dir` holds a PEFT adapter rather than a model.
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(ADAPTER_CONFIG_FILE).exists()
}

/// A switch shared by every adapter of one model: off, the model computes as its base (a
/// reference policy without a copy of the weights).
#[derive(Debug, Clone, Default)]
pub struct AdapterSwitch(Arc<AtomicBool>);

impl AdapterSwitch {
    pub fn set_enabled(&self, on: bool) {
        self.0.store(on, Ordering::Relaxed);
    }

    pub fn enabled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The low-rank update of one linear layer.
#[derive(Debug)]
pub struct Adapter {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    pub dropout: f64,
    switch: AdapterSwitch,
}

impl Adapter {
    /// Creates `lora_A` / `lora_B` under `p` (the adapted module's path) for a layer mapping
    /// `input` to `output` features.
    pub fn new(
        p: &nn::Path,
        input: i64,
        output: i64,
        cfg: &LoraConfig,
        switch: &AdapterSwitch,
    ) -> Self {
        let bound = 1.0 / (input as f64).sqrt();
        Self {
            a: (p / "lora_A").var(
                "weight",
                &[cfg.rank, input],
                nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            ),
            b: (p / "lora_B").var("weight", &[output, cfg.rank], nn::Init::Const(0.0)),
            scale: cfg.scale(),
            dropout: cfg.dropout,
            switch: switch.clone(),
        }
    }

    /// A second handle on the same tensors (for a checkpointed layer).
    pub fn share(&self) -> Self {
        Self {
            a: self.a.shallow_clone(),
            b: self.b.shallow_clone(),
            scale: self.scale,
            dropout: self.dropout,
            switch: self.switch.clone(),
        }
    }

    /// `(α/r)·dropout(x)·Aᵀ·Bᵀ`, or nothing while the adapters are switched off. Dropout
    /// applies only in grad mode: every evaluation path of this engine runs without grad.
    pub fn delta(&self, x: &Tensor) -> Option<Tensor> {
        if !self.switch.enabled() {
            return None;
        }
        let x = if self.dropout > 0.0 && crate::recompute::grad_enabled() {
            x.dropout(self.dropout, true)
        } else {
            x.shallow_clone()
        };
        Some(x.matmul(&self.a.tr()).matmul(&self.b.tr()) * self.scale)
    }

    /// `(α/r)·B·A` in f32: what merging adds to the base weight.
    pub fn merged_delta(&self) -> Tensor {
        self.b
            .to_kind(Kind::Float)
            .matmul(&self.a.to_kind(Kind::Float))
            * self.scale
    }
}

/// Whether a variable name is an adapter's.
pub fn is_adapter_tensor(name: &str) -> bool {
    name.contains(".lora_A.") || name.contains(".lora_B.")
}

/// Writes the adapters of `vs` (and what `task` trains beside them) as a PEFT directory into
/// `dir` (created if needed).
pub fn save_adapter(
    vs: &nn::VarStore,
    cfg: &LoraConfig,
    base: &str,
    task: PeftTask,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let tensors: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(name, _)| task.saves(name))
        .map(|(name, t)| (format!("{PEFT_PREFIX}{name}"), t))
        .collect();
    if tensors.is_empty() {
        return Err(ModelError::InvalidInput(
            "the model has no LoRA adapters to save".into(),
        ));
    }
    crate::tensor_files::write_file(&dir.join(ADAPTER_WEIGHTS_FILE), tensors)?;
    let text =
        serde_json::to_string_pretty(&peft_json(cfg, base, task)).expect("JSON value serialises");
    crate::fsio::write_atomic(&dir.join(ADAPTER_CONFIG_FILE), text.as_bytes())
}

/// Loads a PEFT adapter's tensors into the adapters of `vs` (and what `task` trains beside
/// them), strictly: every one must be in the file and nothing else, with the same shapes; all
/// are checked before any is copied.
pub fn load_adapter_weights(vs: &nn::VarStore, task: PeftTask, dir: &Path) -> Result<()> {
    let path = dir.join(ADAPTER_WEIGHTS_FILE);
    let file = crate::tensor_files::MappedFile::open(&path)?;
    let tensors = file
        .tensors()?
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, (path.as_path(), view)))
        .collect();
    let ours = vs
        .variables()
        .into_iter()
        .filter(|(name, _)| task.saves(name))
        .map(|(name, t)| (format!("{PEFT_PREFIX}{name}"), t))
        .collect();
    crate::checkpoint::copy_checked(&ours, &tensors, &Default::default(), dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(targets: &[&str]) -> LoraConfig {
        LoraConfig::new(4, 8.0, targets)
    }

    #[test]
    fn peft_config_round_trips_and_foreign_variants_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(&["q_proj", "v_proj"]);
        let path = dir.path().join(ADAPTER_CONFIG_FILE);
        std::fs::write(&path, peft_json(&c, "base", PeftTask::CausalLm).to_string()).unwrap();
        assert_eq!(read_peft_config(dir.path()).unwrap(), c);
        let mut dora = peft_json(&c, "base", PeftTask::SeqCls);
        dora["use_dora"] = json!(true);
        std::fs::write(&path, dora.to_string()).unwrap();
        let e = read_peft_config(dir.path()).unwrap_err().to_string();
        assert!(e.contains("use_dora"), "{e}");
    }
}
