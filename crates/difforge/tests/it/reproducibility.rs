//! The portable CPU kernels: a tiny run's weights are the same bytes on every machine (the hash
//! below was written on the development machine and is required wherever the tests run), also
//! when the environment asks libtorch for other kernels; the native kernels differ.

use crate::common::{difforge, tiny_args};
use std::path::Path;

/// SHA-256 of model.safetensors after 10 steps of configs/tiny.toml (2 threads, portable kernels,
/// libtorch 2.11.0).
const PORTABLE_WEIGHTS: &str = "5d5fac46d4917adfb3af67896f90823784da2167b6fc21a54bb0bedf55ee2172";

fn weights_hash(run: &Path) -> String {
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("checkpoints/step-00000010/manifest.json")).unwrap()).unwrap();
    let files = manifest["files"].as_array().unwrap();
    files.iter().find(|f| f["name"] == "model.safetensors").unwrap()["sha256"].as_str().unwrap().to_string()
}

fn train(run: &Path, extra: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let mut sets = vec!["train.steps=10"];
    sets.extend_from_slice(extra);
    let mut cmd = difforge();
    cmd.arg("train").args(tiny_args(&sets)).arg("--out").arg(run).arg("--json");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn portable_kernels_give_the_same_bytes_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let summary = train(&dir.path().join("plain"), &[], &[]);
    assert!(summary["cpu_kernels"].as_str().unwrap().starts_with("portable (ATEN_CPU_CAPABILITY=avx2"), "{summary}");
    assert_eq!(weights_hash(&dir.path().join("plain")), PORTABLE_WEIGHTS, "the portable weights differ from the development machine's");

    let hostile = [("ATEN_CPU_CAPABILITY", "default"), ("ONEDNN_MAX_CPU_ISA", "SSE41"), ("MKL_CBWR", "COMPATIBLE")];
    train(&dir.path().join("pinned"), &[], &hostile);
    assert_eq!(weights_hash(&dir.path().join("pinned")), PORTABLE_WEIGHTS, "the portable mode must override the environment");

    train(&dir.path().join("native"), &["train.cpu_kernels=\"native\""], &hostile[..1]);
    assert_ne!(weights_hash(&dir.path().join("native")), PORTABLE_WEIGHTS, "other kernels should round differently");
}
