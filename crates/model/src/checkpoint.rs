//! Strict safetensors I/O in the Hugging Face layout.
//!
//! Loading reads `model.safetensors` or a sharded `model.safetensors.index.json` and copies every
//! tensor into the `VarStore` by name; a tensor the model expects but the file lacks, one the
//! file has but the model does not, or one with another shape is an error naming it. Saving
//! streams the variables into `model.safetensors`, or shards with an index for a model larger
//! than the shard size (see [`crate::tensor_files`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use tch::{Tensor, nn::VarStore};

use crate::error::{ModelError, Result};
pub use crate::tensor_files::{DEFAULT_MAX_SHARD_BYTES, INDEX_FILE, WEIGHTS_FILE};
use crate::tensor_files::{MappedFile, host_tensor};

/// Which names a load may tolerate beyond an exact match.
#[derive(Default)]
pub struct LoadRules<'a> {
    /// File tensors that are skipped instead of reported as unexpected.
    pub ignore_unexpected: Option<&'a dyn Fn(&str) -> bool>,
    /// Model variables that keep their initial value when the file lacks them.
    pub allow_missing: Option<&'a dyn Fn(&str) -> bool>,
}

/// Tensors that HF checkpoints carry but that are not parameters: RoPE buffers saved by old
/// transformers versions.
pub fn is_non_parameter_buffer(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq")
}

/// Memory-maps the safetensors files of a model directory.
struct WeightFiles {
    files: Vec<MappedFile>,
}

impl WeightFiles {
    fn open(dir: &Path) -> Result<Self> {
        let single = dir.join(WEIGHTS_FILE);
        let index = dir.join(INDEX_FILE);
        let paths = if single.exists() {
            vec![single]
        } else if index.exists() {
            shard_files(&index)?
        } else {
            return Err(ModelError::Checkpoint {
                path: dir.to_path_buf(),
                message: format!("neither {WEIGHTS_FILE} nor {INDEX_FILE} found"),
            });
        };
        let files = paths
            .iter()
            .map(|p| MappedFile::open(p))
            .collect::<Result<_>>()?;
        Ok(Self { files })
    }

    /// Every tensor of every file, by name, with the file it came from.
    fn tensors(&self) -> Result<HashMap<String, (&Path, TensorView<'_>)>> {
        let mut out = HashMap::new();
        for file in &self.files {
            for (name, view) in file.tensors()?.tensors() {
                if out
                    .insert(name.clone(), (file.path.as_path(), view))
                    .is_some()
                {
                    return Err(ModelError::Checkpoint {
                        path: file.path.clone(),
                        message: format!("tensor `{name}` appears in more than one shard"),
                    });
                }
            }
        }
        Ok(out)
    }
}

fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| ModelError::io(index, e))?;
    let bad = |message: String| ModelError::Checkpoint {
        path: index.to_path_buf(),
        message,
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("missing object `weight_map`".into()))?;
    let mut files: Vec<String> = map
        .values()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| bad(format!("bad shard name {v}")))
        })
        .collect::<Result<_>>()?;
    files.sort();
    files.dedup();
    let dir = index.parent().unwrap_or(Path::new("."));
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Loads the weights in `dir` into `vs`, checking names and shapes strictly (see [`LoadRules`]).
/// Values are converted to each variable's dtype and device.
pub fn load_into(vs: &VarStore, dir: &Path, rules: &LoadRules) -> Result<()> {
    let files = WeightFiles::open(dir)?;
    copy_checked(&vs.variables(), &files.tensors()?, rules, dir)
}

/// Copies file tensors into `variables`, both keyed by the name the files use, per `rules`:
/// every name and shape is checked before anything is copied, so a rejected checkpoint leaves
/// the model exactly as it was. `dir` is what a missing tensor is reported against.
pub(crate) fn copy_checked(
    variables: &HashMap<String, Tensor>,
    tensors: &HashMap<String, (&Path, TensorView<'_>)>,
    rules: &LoadRules,
    dir: &Path,
) -> Result<()> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        let (path, _) = &tensors[name];
        let skip =
            is_non_parameter_buffer(name) || rules.ignore_unexpected.is_some_and(|f| f(name));
        if !variables.contains_key(name) && !skip {
            return Err(ModelError::UnexpectedTensor {
                path: path.to_path_buf(),
                name: name.clone(),
            });
        }
    }
    let mut var_names: Vec<&String> = variables.keys().collect();
    var_names.sort();
    // Validate everything before copying anything: a rejected checkpoint must leave the
    // model exactly as it was (a live service keeps serving its old weights).
    let mut copies = Vec::with_capacity(var_names.len());
    for name in var_names {
        let var = &variables[name];
        let Some((path, view)) = tensors.get(name) else {
            if rules.allow_missing.is_some_and(|f| f(name)) {
                continue;
            }
            return Err(ModelError::MissingTensor {
                path: dir.to_path_buf(),
                name: name.clone(),
            });
        };
        let found: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        if found != var.size() {
            return Err(ModelError::ShapeMismatch {
                path: path.to_path_buf(),
                name: name.clone(),
                expected: var.size(),
                found,
            });
        }
        copies.push((var, view, *path, name));
    }
    let _guard = tch::no_grad_guard();
    // One host tensor at a time: the copy into the variable converts dtype and device.
    for (var, view, path, name) in copies {
        let src = host_tensor(view, path, name)?;
        var.shallow_clone().f_copy_(&src)?;
    }
    Ok(())
}

/// Loads a saved model directory with no tolerance beyond what transformers allows: a tied
/// model may carry a redundant `lm_head.weight`.
pub fn load_strict(vs: &VarStore, dir: &Path, tied_embeddings: bool) -> Result<()> {
    let ignore = move |name: &str| tied_embeddings && name == "lm_head.weight";
    load_into(
        vs,
        dir,
        &LoadRules {
            ignore_unexpected: Some(&ignore),
            allow_missing: None,
        },
    )
}

/// Writes every variable of `vs` but LoRA adapters (plus `extra` tensors) to `dir` in the
/// Hugging Face layout, sharded beyond [`DEFAULT_MAX_SHARD_BYTES`].
pub fn save(vs: &VarStore, extra: &[(String, Tensor)], dir: &Path) -> Result<()> {
    save_sharded(vs, extra, dir, DEFAULT_MAX_SHARD_BYTES)
}

/// [`save`] with shards of at most `max_shard_bytes` (one tensor per shard at the least).
pub fn save_sharded(
    vs: &VarStore,
    extra: &[(String, Tensor)],
    dir: &Path,
    max_shard_bytes: u64,
) -> Result<()> {
    // LoRA adapters are saved on their own, in PEFT's layout (`crate::lora`).
    let all = vs
        .variables()
        .into_iter()
        .filter(|(name, _)| !crate::lora::is_adapter_tensor(name))
        .chain(extra.iter().map(|(n, t)| (n.clone(), t.shallow_clone())))
        .collect();
    crate::tensor_files::save_model(dir, all, max_shard_bytes)
}
