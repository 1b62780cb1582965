//! Compiles native/difforge_native.cpp and native/distributed.cpp against the headers of the libtorch that torch-sys links
//! (the torch 2.11.0 wheel), with the same flags torch-sys uses for its own C++ (C++17, the
//! wheel's C++11 ABI). The CUDA half is compiled when that libtorch has CUDA (libtorch_cuda.so
//! and the CUDA runtime headers of the wheel's nvidia packages); otherwise the CUDA entry points
//! report "built without CUDA". c10d's Gloo process group is always compiled (its gloo headers are
//! vendored in native/third_party/gloo); the NCCL one with the CUDA half, when the wheel's NCCL
//! headers are there.

use std::env;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=native");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-env-changed=DIFFORGE_NATIVE_CUDA_INCLUDE");
    let lib = PathBuf::from(env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys did not say where libtorch is (DEP_TCH_LIBTORCH_LIB)"));
    let root = lib.parent().expect("libtorch lib dir has a parent").to_path_buf();
    let abi = env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .std("c++17")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .define("GLOG_USE_GLOG_EXPORT", None)
        // c10d's headers declare the Gloo process group only when told it was built.
        .define("USE_C10D_GLOO", None)
        .include("native/third_party/gloo")
        .flag_if_supported("-Wno-unused-parameter")
        // c10 headers align to std::hardware_destructive_interference_size; pin the value
        // libtorch was built with instead of the compiler's tuning-dependent default.
        .flag_if_supported("--param=destructive-interference-size=64")
        .file("native/difforge_native.cpp")
        .file("native/distributed.cpp");
    if let Some(cuda_include) = cuda_headers(&lib) {
        build.define("DIFFORGE_NATIVE_CUDA", None).include(cuda_include);
        if let Some(nccl_include) = nccl_headers(&lib) {
            build.define("USE_C10D_NCCL", None).define("DIFFORGE_NATIVE_NCCL", None).include(nccl_include);
        }
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-cfg=difforge_native_cuda");
    }
    println!("cargo:rustc-check-cfg=cfg(difforge_native_cuda)");
    build.compile("difforge_native");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-env=DIFFORGE_NATIVE_LIBTORCH_LIB={}", lib.display());
    // This crate's own tests find libtorch without LD_LIBRARY_PATH (dependents set theirs).
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}

/// The NCCL headers of the wheel's nvidia-nccl package (`site-packages/nvidia/nccl/include`),
/// which ProcessGroupNCCL.hpp includes.
fn nccl_headers(lib: &Path) -> Option<PathBuf> {
    let dir = lib.parent()?.parent()?.join("nvidia/nccl/include");
    if dir.join("nccl.h").exists() {
        return Some(dir);
    }
    println!("cargo:warning=CUDA libtorch found but {} lacks nccl.h: the native layer is built without the NCCL process group", dir.display());
    None
}

/// The CUDA runtime headers matching a CUDA libtorch: `DIFFORGE_NATIVE_CUDA_INCLUDE`, else the
/// wheel's `site-packages/nvidia/cu*/include` next to `torch/`.
fn cuda_headers(lib: &Path) -> Option<PathBuf> {
    if !lib.join("libtorch_cuda.so").exists() {
        return None;
    }
    if let Ok(dir) = env::var("DIFFORGE_NATIVE_CUDA_INCLUDE") {
        return Some(PathBuf::from(dir));
    }
    let site = lib.parent()?.parent()?; // site-packages/torch/lib -> site-packages
    let nvidia = site.join("nvidia");
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(&nvidia).ok()?.flatten().map(|e| e.path().join("include")).collect();
    candidates.push(nvidia.join("cuda_runtime/include"));
    candidates.sort();
    let found = candidates.into_iter().find(|d| d.join("cuda_runtime_api.h").exists());
    // The runtime headers include crt/host_defines.h and nv/target, which pip's nvidia-cuda-crt
    // and nvidia-cuda-cccl provide (tools/setup_venv.sh installs both).
    let dir = found?;
    let missing: Vec<&str> = ["crt/host_defines.h", "nv/target"].into_iter().filter(|h| !dir.join(h).exists()).collect();
    if missing.is_empty() {
        return Some(dir);
    }
    println!(
        "cargo:warning=CUDA libtorch found but {} lacks {} (tools/setup_venv.sh installs nvidia-cuda-crt and nvidia-cuda-cccl): the native layer is built without its CUDA half",
        dir.display(),
        missing.join(" and ")
    );
    None
}
