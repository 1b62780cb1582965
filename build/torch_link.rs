// Shared by every crate that links libtorch (included from each build.rs).
//
// Why: torch-sys links libtorch but (1) the linker drops `libtorch_cuda.so` under
// `--as-needed` because no symbol of it is referenced directly, which makes CUDA silently
// unavailable, and (2) nothing gives the produced binaries an rpath, so they would need
// LD_LIBRARY_PATH. Both are fixed here for every binary, test and example of the crate.
use std::path::PathBuf;
use std::process::Command;

fn torch_lib_dir() -> Option<PathBuf> {
    if let Ok(root) = std::env::var("LIBTORCH") {
        return Some(PathBuf::from(root).join("lib"));
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let out = Command::new(python)
        .args(["-c", "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The torch version of the environment, for `difforge info`.
fn torch_version() -> Option<String> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let out = Command::new(python).args(["-c", "import torch; print(torch.__version__)"]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn link_torch() {
    let version = torch_version().unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=DIFFORGE_LIBTORCH_VERSION={version}");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=PYTHON");
    println!("cargo:rerun-if-env-changed=VIRTUAL_ENV");
    let Some(dir) = torch_lib_dir() else {
        println!("cargo:warning=libtorch not found: binaries will need LD_LIBRARY_PATH");
        return;
    };
    println!("cargo:rustc-link-search=native={}", dir.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    if dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
