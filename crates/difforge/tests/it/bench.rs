//! End-to-end test of `difforge bench` on a tiny model, on the CPU.

use crate::common::{difforge, TINY_CONFIG};

#[test]
fn bench_reports_positive_throughput_flops_and_memory() {
    let out = difforge()
        .arg("bench")
        .arg("--model")
        .arg(TINY_CONFIG)
        .args(["--batch", "2", "--steps", "1", "--warmup", "1", "--sample-steps", "2", "--device", "cpu", "--threads", "2", "--peak-tflops", "1", "--json"])
        .output()
        .expect("runs");
    assert!(out.status.success(), "bench failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    for key in [
        "parameters",
        "train_step_s",
        "train_images_per_s",
        "flops_per_image_forward",
        "flops_per_image_train",
        "train_tflops",
        "sample_s",
        "sample_images_per_s",
        "sample_tflops",
        "mfu",
        "peak_memory_bytes",
        "threads",
    ] {
        let x = v[key].as_f64().unwrap_or_else(|| panic!("`{key}` missing or not a number in {v}"));
        assert!(x > 0.0 && x.is_finite(), "`{key}` = {x}");
    }
    assert_eq!(v["device"], "cpu");
    assert_eq!(v["batch"], 2);
    assert_eq!(v["sample_batch"], 2);
    assert_eq!(v["sample_steps"], 2);
    assert_eq!(v["sampler"], "ddim");
    let (fwd, train) = (v["flops_per_image_forward"].as_f64().unwrap_or(0.0), v["flops_per_image_train"].as_f64().unwrap_or(0.0));
    assert_eq!(train, 3.0 * fwd);
}

#[test]
fn bench_names_the_bad_option() {
    let out = difforge().args(["bench", "--model", "no-such-model"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--model no-such-model") && err.contains("ref6m"), "{err}");
    let out = difforge().args(["bench", "--model", "ref6m", "--precision", "fp8"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--precision") && err.contains("fp8") && err.contains("\"bf16\""), "{err}");
}
