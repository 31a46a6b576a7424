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

/// A random tiny model whose weights are large enough that logits are O(1).
pub fn tiny_model(arch: Arch, tied: bool, vocab: i64, seed: i64) -> CausalLm {
    let mut preset = SizePreset::by_name("tiny").unwrap();
    preset.tied = tied;
    let cfg = ModelConfig::new_random(arch, &preset, vocab, None, 1, Some(0), 256);
    tch::manual_seed(seed);
    let model = CausalLm::new(cfg, Placement::default()).unwrap();
    let _guard = tch::no_grad_guard();
    for (name, mut var) in model.vs.variables() {
        let noise = Tensor::randn(var.size(), (Kind::Float, var.device())) * 0.15;
        let value = if name.contains("norm") {
            noise + 1.0
        } else {
            noise
        };
        var.copy_(&value);
    }
    model
}
