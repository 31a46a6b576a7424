//! Where and in which precision a model runs: device (`cpu`, `cuda`, `cuda:N`), dtype
//! (`f32`, `bf16`) and libtorch's intra-op thread count.

use std::str::FromStr;

use tch::{Device, Kind, nn};

use crate::llama::ParamInit;

use crate::error::{ModelError, Result};

/// Parses `cpu`, `cuda` (= `cuda:0`) or `cuda:N`; CUDA must actually be available.
pub fn parse_device(text: &str) -> Result<Device> {
    let device = match text.trim() {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").map(usize::from_str) {
            Some(Ok(n)) => Device::Cuda(n),
            _ => {
                return Err(ModelError::InvalidInput(format!(
                    "device `{text}`: expected cpu, cuda or cuda:N"
                )));
            }
        },
    };
    if let Device::Cuda(n) = device {
        let count = tch::Cuda::device_count();
        if n as i64 >= count {
            return Err(ModelError::InvalidInput(format!(
                "device `{text}`: this machine has {count} CUDA device(s)"
            )));
        }
    }
    Ok(device)
}

/// Parses the parameter dtype: `f32`/`float32` or `bf16`/`bfloat16`.
pub fn parse_dtype(text: &str) -> Result<Kind> {
    match text.trim() {
        "f32" | "float32" | "fp32" => Ok(Kind::Float),
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        other => Err(ModelError::InvalidInput(format!(
            "dtype `{other}`: expected f32 or bf16"
        ))),
    }
}

/// The HF `torch_dtype` name of a kind.
pub fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        _ => "float32",
    }
}

/// Sets libtorch's intra-op thread count; 0 keeps libtorch's default (one per core).
///
/// Why it matters: while another process keeps the cores busy, libtorch's spinning OpenMP
/// workers make small matrix products orders of magnitude slower, so tests that run in
/// parallel use one thread each.
pub fn set_threads(threads: usize) {
    if threads > 0 {
        tch::set_num_threads(threads as i32);
    }
}

/// Where and how a model is loaded.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    pub device: Device,
    pub kind: Kind,
}

impl Default for Placement {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            kind: Kind::Float,
        }
    }
}

impl Placement {
    /// Where a service's engine puts its model (`[engine]` `device`, `dtype`), after setting
    /// libtorch's intra-op `threads` (0: leave libtorch's default, one per core).
    pub fn for_engine(device: &str, dtype: &str, threads: usize) -> Result<Self> {
        set_threads(threads);
        Self::parse(device, dtype)
    }

    /// An empty store for a model's parameters. Parameters that a checkpoint will fill are
    /// created directly in the target dtype; random ones are drawn in f32 (as transformers
    /// draws them) and cast by [`Self::finish_var_store`].
    pub fn var_store(&self, fill: ParamInit) -> nn::VarStore {
        let mut vs = nn::VarStore::new(self.device);
        if fill == ParamInit::Unfilled {
            vs.set_kind(self.kind);
        }
        vs
    }

    /// Casts a store built by [`Self::var_store`] to the target dtype (a no-op when its
    /// parameters were created in it).
    pub fn finish_var_store(&self, mut vs: nn::VarStore) -> nn::VarStore {
        if vs.kind() != self.kind {
            vs.set_kind(self.kind);
        }
        vs
    }

    pub fn parse(device: &str, dtype: &str) -> Result<Self> {
        Ok(Self {
            device: parse_device(device)?,
            kind: parse_dtype(dtype)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_dtypes() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert!(parse_device("tpu").unwrap_err().to_string().contains("tpu"));
        assert!(parse_device("cuda:x").is_err());
        assert_eq!(parse_dtype("bf16").unwrap(), Kind::BFloat16);
        assert!(
            parse_dtype("int8")
                .unwrap_err()
                .to_string()
                .contains("int8")
        );
    }
}
