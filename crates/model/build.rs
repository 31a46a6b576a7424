//! Compiles the autograd shims (`csrc/recompute.cpp`, activation checkpointing; `csrc/grad.cpp`,
//! releasing gradients) against the headers of the libtorch that torch-sys links (the PyPI
//! torch wheel in `.venv/`), and embeds an rpath to that libtorch's `lib/` so the crate's test
//! binaries run without `LD_LIBRARY_PATH`.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let lib = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB")
            .expect("torch-sys did not report its libtorch (DEP_TCH_LIBTORCH_LIB)"),
    );
    let include = lib
        .parent()
        .expect("libtorch lib/ has a parent")
        .join("include");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .pic(true)
        .warnings(false)
        .opt_level(2)
        .file("csrc/recompute.cpp")
        .file("csrc/grad.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        // torch ≥ 2.7 wheels use the C++11 ABI, as torch-sys assumes by default.
        .define(
            "_GLIBCXX_USE_CXX11_ABI",
            std::env::var("LIBTORCH_CXX11_ABI")
                .unwrap_or_else(|_| "1".into())
                .as_str(),
        )
        .compile("rrlhf_recompute");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}
