//! Compiles the c10d shim (`shim/c10d.cpp`) against the libtorch that tch links.
//!
//! c10d's headers ship in the torch wheel; gloo's own headers, which `ProcessGroupGloo.hpp`
//! includes, do not: Debian's `libgloo-dev` supplies them (headers only: every gloo symbol comes
//! from libtorch_cpu, which links gloo in statically; `libgloo.so` is never linked). The NCCL
//! path is compiled when libtorch has CUDA and the CUDA headers it needs are in the wheel's
//! `nvidia/cu13/include` (`scripts/setup` adds the two header packages the wheel lacks).
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=shim/c10d.cpp");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DLLM_DIST_NO_NCCL");
    let lib = PathBuf::from(std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys must be a direct dependency (DEP_TCH_LIBTORCH_LIB)"));
    // .venv/libtorch is a link to site-packages/torch: resolve it to find site-packages/nvidia.
    let torch = lib.canonicalize().unwrap_or_else(|_| lib.clone()).parent().expect("libtorch's lib folder has a parent").to_path_buf();
    let include = torch.join("include");
    let gloo = ["/usr/include/gloo/context.h", "/usr/local/include/gloo/context.h"].iter().any(|p| Path::new(p).exists());
    if !gloo {
        panic!("gloo's headers are missing (ProcessGroupGloo.hpp includes them): install Debian's libgloo-dev (scripts/setup does)");
    }
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("shim/c10d.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-w")
        .define("USE_C10D_GLOO", None)
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("GLOG_USE_GLOG_EXPORT", None);
    // The CUDA headers of the wheel (site-packages/nvidia/cu13/include, next to site-packages/torch).
    let cuda_include = torch.parent().map(|site| site.join("nvidia/cu13/include"));
    let nccl = std::env::var_os("DLLM_DIST_NO_NCCL").is_none()
        && lib.join("libtorch_cuda.so").exists()
        && cuda_include.as_ref().is_some_and(|i| i.join("cuda_runtime_api.h").exists() && i.join("crt/host_config.h").exists() && i.join("nv/target").exists())
        && torch.parent().is_some_and(|site| site.join("nvidia/nccl/include/nccl.h").exists());
    if nccl {
        let site = torch.parent().expect("checked above");
        build
            .define("DLLM_DIST_NCCL", None)
            .define("USE_C10D_NCCL", None)
            .define("USE_CUDA", None)
            .include(cuda_include.as_ref().expect("checked above"))
            .include(site.join("nvidia/nccl/include"));
        println!("cargo:rustc-cfg=dllm_nccl");
    }
    println!("cargo:rustc-check-cfg=cfg(dllm_nccl)");
    build.compile("dllm_c10d");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    if nccl {
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}
