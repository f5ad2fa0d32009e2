//! Link libtorch so that a plain `cargo run` / `cargo test` finds it and CUDA really loads.
//!
//! Shared by every package that links tch (`build = "../policy/build.rs"`). Two problems:
//! - tch's own link arguments stay inside torch-sys; our binaries need their own rpath to the
//!   libtorch they were built against (the project venv's `torch/lib`), or they only start with
//!   `LD_LIBRARY_PATH` set.
//! - the linker's default `--as-needed` drops `libtorch_cuda.so` (nothing references it by
//!   symbol; it registers the CUDA backend from static initialisers), and then
//!   `tch::Cuda::is_available()` is false even on a GPU machine.
//!
//! On a GPU node with its own PyTorch, `bench/gpu/run` points `LD_LIBRARY_PATH` there instead;
//! the rpath only supplies a default.
fn main() {
    println!("cargo:rerun-if-changed=../policy/build.rs");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=DEP_TCH_LIBTORCH_LIB is unset: is torch-sys a direct dependency?");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    println!("cargo:rustc-link-search=native={lib}");
    let cuda = ["libtorch_cuda.so"].iter().any(|f| std::path::Path::new(&lib).join(f).exists());
    if cuda {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
