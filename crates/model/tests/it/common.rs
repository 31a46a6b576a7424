//! Helpers shared by the integration tests: the venv's Python, tiny random models.

use std::path::{Path, PathBuf};
use std::process::Command;

use rrlhf_model::{Arch, CausalLm, ModelConfig, Placement, SizePreset};
use tch::{Kind, Tensor};

/// One libtorch thread per test: tests run in parallel and spinning OpenMP workers would
/// otherwise fight over the two cores.
pub fn init() {
    tch::set_num_threads(1);
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The Python that `make setup` installed (override with `RRLHF_PYTHON`).
pub fn python() -> Command {
    let py = std::env::var_os("RRLHF_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"));
    assert!(
        py.exists(),
        "{} not found: run `make setup` first",
        py.display()
    );
    let mut cmd = Command::new(py);
    cmd.env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        .env("OMP_NUM_THREADS", "1");
    cmd
}

/// Runs a Python script under `python/`, panicking with its output when it fails.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let out = python()
        .arg(repo_root().join("python").join(script))
        .args(args)
        .output()
        .expect("spawn python");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "python {script} {args:?} failed:\n{text}"
    );
    text
}

/// Deterministic pseudo-random values in [-1, 1) of `shape`: a hash of the element index and
/// `seed`. Tests run in parallel threads that share libtorch's global generator, so weights drawn
/// from it would depend on scheduling.
pub fn hashed_noise(shape: &[i64], seed: i64) -> Tensor {
    let n: i64 = shape.iter().product();
    let x = Tensor::arange(n, (Kind::Double, tch::Device::Cpu)) * 12.9898 + seed as f64 * 78.233;
    let h = x.sin() * 43758.5453;
    ((h.frac().abs() * 2.0) - 1.0)
        .to_kind(Kind::Float)
        .view(shape)
}

/// A random tiny model whose weights are large enough that logits are O(1), reproducible
/// whatever else runs concurrently.
pub fn tiny_model(arch: Arch, tied: bool, vocab: i64, seed: i64) -> CausalLm {
    let mut preset = SizePreset::by_name("tiny").unwrap();
    preset.tied = tied;
    let cfg = ModelConfig::new_random(arch, &preset, vocab, None, 1, Some(0), 256);
    let model = CausalLm::new(cfg, Placement::default()).unwrap();
    let _guard = tch::no_grad_guard();
    let mut vars: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (i, (name, mut var)) in vars.into_iter().enumerate() {
        let noise = hashed_noise(&var.size(), seed * 1000 + i as i64) * 0.25;
        let value = if name.contains("norm") {
            noise + 1.0
        } else {
            noise
        };
        var.copy_(&value);
    }
    model
}
