//! safetensors files at model scale. Writes stream: each tensor is copied to the host only when
//! the writer reaches it, so saving holds one tensor's bytes besides the model, never a second
//! copy of all of it; a large model is split into Hugging Face shards with an index. Reads
//! memory-map the file and materialise one tensor at a time.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use safetensors::tensor::View;
pub use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use tch::{Device, Kind, Tensor};

use crate::error::{ModelError, Result};

/// The single-file weights of a model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The index of a sharded model directory.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The largest shard a model save writes before starting another: transformers'
/// `save_pretrained` default (`max_shard_size="5GB"`).
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

pub(crate) fn kind_of(dtype: Dtype, path: &Path, name: &str) -> Result<Kind> {
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

fn dtype_of(kind: Kind, name: &str) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        other => {
            return Err(ModelError::InvalidInput(format!(
                "tensor `{name}`: cannot save dtype {other:?}"
            )));
        }
    })
}

/// A tensor on any device, read out to host bytes only when the file writer asks for it.
struct Deferred {
    tensor: Tensor,
    dtype: Dtype,
    shape: Vec<usize>,
}

impl Deferred {
    fn new(name: &str, tensor: Tensor) -> Result<Self> {
        Ok(Self {
            dtype: dtype_of(tensor.kind(), name)?,
            shape: tensor.size().iter().map(|&d| d as usize).collect(),
            tensor,
        })
    }

    fn bytes(&self) -> u64 {
        (self.tensor.numel() * self.tensor.kind().elt_size_in_bytes()) as u64
    }
}

impl View for Deferred {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        // The trait cannot fail; a tensor that cannot be read back (a dead device) panics
        // here, inside the save, which callers already treat as a failed write.
        let host = self.tensor.to_device(Device::Cpu).contiguous();
        let numel = host.numel();
        let mut bytes = vec![0u8; numel * host.kind().elt_size_in_bytes()];
        host.copy_data_u8(&mut bytes, numel);
        Cow::Owned(bytes)
    }

    fn data_len(&self) -> usize {
        self.bytes() as usize
    }
}

/// Writes `tensors` to the safetensors file `path` atomically (temporary sibling, fsync,
/// rename), streaming them one at a time. `{"format": "pt"}` is recorded, as transformers needs.
pub fn write_file(path: &Path, tensors: Vec<(String, Tensor)>) -> Result<()> {
    let views = tensors
        .into_iter()
        .map(|(name, t)| Deferred::new(&name, t).map(|v| (name, v)))
        .collect::<Result<Vec<_>>>()?;
    write_views(path, views)
}

fn write_views(path: &Path, views: Vec<(String, Deferred)>) -> Result<()> {
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    rrlhf_util::fsio::write_atomic_with(path, |tmp| {
        safetensors::serialize_to_file(views, Some(metadata), tmp).map_err(std::io::Error::other)
    })
    .map_err(|e| ModelError::Checkpoint {
        path: path.to_path_buf(),
        message: format!("writing: {e}"),
    })
}

/// The file names of a model split into `n` shards, as transformers names them.
fn shard_name(i: usize, n: usize) -> String {
    format!("model-{:05}-of-{n:05}.safetensors", i + 1)
}

/// Writes a model's weights into `dir` in the Hugging Face layout: one `model.safetensors`, or,
/// when they exceed `max_shard_bytes`, shards of at most that size (a larger single tensor gets
/// a shard of its own) plus `model.safetensors.index.json`. Tensors are taken in name order.
/// Files of the other layout, or shards of an earlier save, are removed once the new files are
/// complete, so a directory never holds two models.
pub fn save_model(dir: &Path, tensors: Vec<(String, Tensor)>, max_shard_bytes: u64) -> Result<()> {
    let mut sorted = tensors
        .into_iter()
        .map(|(name, t)| Deferred::new(&name, t).map(|v| (name, v)))
        .collect::<Result<Vec<_>>>()?;
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let total: u64 = sorted.iter().map(|(_, v)| v.bytes()).sum();
    let mut shards: Vec<Vec<(String, Deferred)>> = vec![Vec::new()];
    let mut size = 0u64;
    for (name, view) in sorted {
        let last = shards.last_mut().expect("one shard at least");
        if !last.is_empty() && size + view.bytes() > max_shard_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        size += view.bytes();
        shards.last_mut().expect("just pushed").push((name, view));
    }
    let n = shards.len();
    let mut keep = Vec::new();
    if n == 1 {
        let only = shards.pop().expect("one shard");
        write_views(&dir.join(WEIGHTS_FILE), only)?;
        keep.push(WEIGHTS_FILE.to_string());
    } else {
        let mut weight_map = BTreeMap::new();
        for (i, shard) in shards.into_iter().enumerate() {
            let file = shard_name(i, n);
            for (name, _) in &shard {
                weight_map.insert(name.clone(), file.clone());
            }
            write_views(&dir.join(&file), shard)?;
            keep.push(file);
        }
        let index = serde_json::json!({
            "metadata": {"total_size": total},
            "weight_map": weight_map,
        });
        let text = serde_json::to_string_pretty(&index).expect("JSON value serialises");
        crate::fsio::write_atomic(&dir.join(INDEX_FILE), text.as_bytes())?;
        keep.push(INDEX_FILE.to_string());
    }
    remove_stale_weights(dir, &keep)
}

/// Removes weight files of `dir` that are not in `keep`: a single file, an index or shards
/// left by an earlier save in another layout.
fn remove_stale_weights(dir: &Path, keep: &[String]) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ModelError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_weights = name == WEIGHTS_FILE
            || name == INDEX_FILE
            || (name.starts_with("model-") && name.ends_with(".safetensors"));
        if is_weights && !keep.contains(&name) {
            std::fs::remove_file(entry.path()).map_err(|e| ModelError::io(entry.path(), e))?;
        }
    }
    Ok(())
}

/// A memory-mapped safetensors file.
pub struct MappedFile {
    pub path: PathBuf,
    map: memmap2::Mmap,
}

impl MappedFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: the file is opened read-only and only read while mapped; writers replace
        // weight files by rename, never in place (see `write_file`).
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
        })
    }

    /// The file's tensors as views into the mapping.
    pub fn tensors(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.map).map_err(|e| ModelError::Checkpoint {
            path: self.path.clone(),
            message: format!("not a valid safetensors file: {e}"),
        })
    }
}

/// A flat host tensor holding a copy of elements `start .. start + len` of `view` (in its
/// row-major order): how a sharded optimizer reads its part of a saved tensor without copying
/// the whole of it.
pub fn host_slice(
    view: &TensorView<'_>,
    path: &Path,
    name: &str,
    start: usize,
    len: usize,
) -> Result<Tensor> {
    let kind = kind_of(view.dtype(), path, name)?;
    let size = kind.elt_size_in_bytes();
    let bytes = view
        .data()
        .get(start * size..(start + len) * size)
        .ok_or_else(|| ModelError::Checkpoint {
            path: path.to_path_buf(),
            message: format!(
                "tensor `{name}` has no elements {start}..{} (it has {})",
                start + len,
                view.data().len() / size
            ),
        })?;
    Ok(Tensor::f_from_data_size(bytes, &[len as i64], kind)?)
}

/// A host tensor holding a copy of `view` (the only copy made while loading it).
pub fn host_tensor(view: &TensorView<'_>, path: &Path, name: &str) -> Result<Tensor> {
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    let kind = kind_of(view.dtype(), path, name)?;
    Ok(Tensor::f_from_data_size(view.data(), &shape, kind)?)
}
