//! Embeds an rpath to libtorch's `lib/` (from the torch wheel in `.venv/`) into this crate's
//! test binaries, so they run without `LD_LIBRARY_PATH`.
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
