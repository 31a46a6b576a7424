//! Strict safetensors I/O in the Hugging Face layout.
//!
//! Loading reads `model.safetensors` or a sharded `model.safetensors.index.json` and copies every
//! tensor into the `VarStore` by name; a tensor the model expects but the file lacks, one the
//! file has but the model does not, or one with another shape is an error naming it. Saving
//! writes one `model.safetensors` with `{"format": "pt"}` metadata, which transformers requires.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use tch::{Device, Kind, Tensor, nn::VarStore};

use crate::error::{ModelError, Result};

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

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
    maps: Vec<(PathBuf, memmap2::Mmap)>,
}

impl WeightFiles {
    fn open(dir: &Path) -> Result<Self> {
        let single = dir.join(WEIGHTS_FILE);
        let index = dir.join(INDEX_FILE);
        let files = if single.exists() {
            vec![single]
        } else if index.exists() {
            shard_files(&index)?
        } else {
            return Err(ModelError::Checkpoint {
                path: dir.to_path_buf(),
                message: format!("neither {WEIGHTS_FILE} nor {INDEX_FILE} found"),
            });
        };
        let maps = files
            .into_iter()
            .map(|path| {
                let file = File::open(&path).map_err(|e| ModelError::io(&path, e))?;
                // SAFETY: the file is opened read-only and only read while mapped; a concurrent
                // writer replaces checkpoints by rename, never in place (see fsio).
                #[allow(unsafe_code)]
                let map =
                    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(&path, e))?;
                Ok((path, map))
            })
            .collect::<Result<_>>()?;
        Ok(Self { maps })
    }

    /// Every tensor of every file, by name, with the file it came from.
    fn tensors(&self) -> Result<HashMap<String, (&Path, TensorView<'_>)>> {
        let mut out = HashMap::new();
        for (path, map) in &self.maps {
            let st = SafeTensors::deserialize(map).map_err(|e| ModelError::Checkpoint {
                path: path.clone(),
                message: format!("not a valid safetensors file: {e}"),
            })?;
            for (name, view) in st.tensors() {
                if out.insert(name.clone(), (path.as_path(), view)).is_some() {
                    return Err(ModelError::Checkpoint {
                        path: path.clone(),
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

fn kind_of(dtype: Dtype, path: &Path, name: &str) -> Result<Kind> {
    Ok(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        other => {
            return Err(ModelError::Checkpoint {
                path: path.to_path_buf(),
                message: format!("tensor `{name}` has unsupported dtype {other:?}"),
            });
        }
    })
}

/// Loads the weights in `dir` into `vs`, checking names and shapes strictly (see [`LoadRules`]).
/// Values are converted to each variable's dtype and device.
pub fn load_into(vs: &VarStore, dir: &Path, rules: &LoadRules) -> Result<()> {
    let files = WeightFiles::open(dir)?;
    let tensors = files.tensors()?;
    let variables = vs.variables();
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
        copies.push((var, view, kind_of(view.dtype(), path, name)?, found));
    }
    let _guard = tch::no_grad_guard();
    for (var, view, kind, shape) in copies {
        let src = Tensor::f_from_data_size(view.data(), &shape, kind)?;
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

fn dtype_of(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        other => {
            return Err(ModelError::InvalidInput(format!(
                "cannot save dtype {other:?}"
            )));
        }
    })
}

/// Writes every variable of `vs` (plus `extra` tensors) to `DIR/model.safetensors` atomically.
pub fn save(vs: &VarStore, extra: &[(String, Tensor)], dir: &Path) -> Result<()> {
    let mut host: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> = BTreeMap::new();
    let all = vs
        .variables()
        .into_iter()
        .chain(extra.iter().map(|(n, t)| (n.clone(), t.shallow_clone())));
    for (name, tensor) in all {
        let t = tensor.f_to_device(Device::Cpu)?.f_contiguous()?;
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, numel)?;
        let shape = t.size().iter().map(|&d| d as usize).collect();
        host.insert(name, (dtype_of(t.kind())?, shape, bytes));
    }
    let views = host
        .iter()
        .map(|(name, (dtype, shape, bytes))| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| ModelError::InvalidInput(format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes =
        safetensors::serialize(views, Some(metadata)).map_err(|e| ModelError::Checkpoint {
            path: dir.to_path_buf(),
            message: format!("serialising: {e}"),
        })?;
    crate::fsio::write_atomic(&dir.join(WEIGHTS_FILE), &bytes)
}
