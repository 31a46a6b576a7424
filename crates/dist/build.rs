//! Compiles the c10d shim (`csrc/c10d_shim.cpp`) against the headers of the libtorch that
//! torch-sys links (the PyPI torch wheel in `.venv/`), and links the libraries that define
//! c10d: `torch_cpu` (TCPStore, Gloo) and, when the wheel is a CUDA build whose NCCL and CUDA
//! headers are installed, `torch_cuda` (NCCL). `RRLHF_NCCL=0` builds without NCCL.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-env-changed=RRLHF_NCCL");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let lib = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB")
            .expect("torch-sys did not report its libtorch (DEP_TCH_LIBTORCH_LIB)"),
    );
    let torch = lib.parent().expect("libtorch lib/ has a parent");
    let include = torch.join("include");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .pic(true)
        .warnings(false)
        .opt_level(2)
        .file("csrc/c10d_shim.cpp")
        .include("csrc/gloo_surface")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .define("USE_C10D_GLOO", None)
        .define("GLOG_USE_GLOG_EXPORT", None)
        // torch ≥ 2.7 wheels use the C++11 ABI, as torch-sys assumes by default.
        .define(
            "_GLIBCXX_USE_CXX11_ABI",
            std::env::var("LIBTORCH_CXX11_ABI")
                .unwrap_or_else(|_| "1".into())
                .as_str(),
        );
    let nccl = nccl_headers(&lib);
    if let Some(dirs) = &nccl {
        build
            .define("USE_C10D_NCCL", None)
            .define("USE_CUDA", None)
            .define("RRLHF_WITH_NCCL", None)
            .includes(dirs);
    }
    build.compile("rrlhf_c10d");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    if nccl.is_some() {
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}

/// The include directories NCCL's c10d header needs (nccl.h, the CUDA runtime headers with
/// their `crt/` and `nv/` parts), found in the wheel's `nvidia/` packages; none when the wheel
/// has no `libtorch_cuda` or a header is missing.
fn nccl_headers(lib: &Path) -> Option<Vec<PathBuf>> {
    if std::env::var("RRLHF_NCCL").as_deref() == Ok("0") || !lib.join("libtorch_cuda.so").exists() {
        return None;
    }
    let nvidia = lib.parent()?.parent()?.join("nvidia");
    let nccl = nvidia.join("nccl/include");
    let cuda = std::fs::read_dir(&nvidia)
        .ok()?
        .flatten()
        .map(|e| e.path().join("include"))
        .find(|d| d.join("cuda_runtime.h").exists())?;
    let dirs = vec![nccl.clone(), cuda.clone(), cuda.join("cccl")];
    let missing = [
        nccl.join("nccl.h"),
        cuda.join("crt/host_config.h"),
        cuda.join("cccl/nv/target"),
    ]
    .into_iter()
    .find(|p| !p.exists());
    match missing {
        None => Some(dirs),
        Some(p) => {
            println!(
                "cargo:warning=rrlhf-dist: CUDA libtorch found but {} is missing; building without \
                 NCCL (pip install nvidia-cuda-crt nvidia-cuda-cccl, see python/requirements.txt)",
                p.display()
            );
            None
        }
    }
}
