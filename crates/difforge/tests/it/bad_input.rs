//! Bad input gets a clear error naming the key or flag and exit code 2, never a crash, a hang or
//! silence: values that used to pass validation and then crashed, NaN where a number is needed,
//! and every flag checked like a config key.

use crate::common::{difforge, tiny_args, train_tiny, TINY_CONFIG};

/// Runs difforge with `args` and requires exit code 2 with `expected` in the message.
fn refused(args: &[&str], expected: &str) {
    let out = difforge().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(expected), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
}

#[test]
fn config_values_that_used_to_crash_or_pass_as_nan_are_refused() {
    let long_mult = format!("model.channel_mult=[{}]", vec!["1"; 65].join(","));
    for (set, key) in [
        ("train.sample_per_class=0", "train.sample_per_class"),
        ("model.channels=1000000000", "model.channels"),
        (long_mult.as_str(), "model.channel_mult"),
        ("data.pad=100000", "data.pad"),
        ("model.channels=1024", "model.channels"),
        ("train.adam_eps=nan", "train.adam_eps"),
        ("train.grad_clip=nan", "train.grad_clip"),
        ("train.weight_decay=nan", "train.weight_decay"),
        ("diffusion.min_snr_gamma=nan", "diffusion.min_snr_gamma"),
        ("train.spike_zscore=nan", "train.spike_zscore"),
        ("train.early_stop_min_delta=nan", "train.early_stop_min_delta"),
        ("sample.guidance=nan", "sample.guidance"),
        ("data.augment.rotate=nan", "data.augment.rotate"),
    ] {
        let mut args = vec!["config", "show", "--config", TINY_CONFIG, "--set", set];
        if set == "model.channels=1024" {
            // 1024 base channels with multipliers up to 16 would be tens of billions of weights.
            args.extend(["--set", "model.channel_mult=[1,16,16]"]);
        }
        refused(&args, key);
    }
}

#[test]
fn flags_are_checked_like_config_keys() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train_tiny(&run, &["train.steps=2"]);
    let ck = run.to_str().unwrap();
    let out = dir.path().join("s.png");
    let out = out.to_str().unwrap();
    for (extra, expected) in [
        (vec!["--n", "0"], "--n 0"),
        (vec!["--steps", "0"], "--steps 0"),
        (vec!["--guidance", "nan"], "--guidance NaN"),
        (vec!["--class", "99"], "--class 99"),
        (vec!["--sampler", "heun"], "'heun' for '--sampler"),
        (vec!["--device", "tpu"], "--device \"tpu\""),
        (vec!["--guidance-interval", "3,1"], "--guidance-interval"),
        (vec!["--lora", "missing.safetensors", "--lora-scale", "nan"], "--lora-scale NaN"),
    ] {
        let mut args = vec!["sample", "--checkpoint", ck, "--out", out];
        args.extend(extra);
        refused(&args, expected);
    }
    refused(&["train", "--config", TINY_CONFIG, "--resume", ck], "--config");
    let mut missing_path = vec!["train".to_string(), "--out".into(), dir.path().join("x").display().to_string()];
    missing_path.extend(tiny_args(&["data.source=\"folder\""]));
    refused(&missing_path.iter().map(String::as_str).collect::<Vec<_>>(), "data.path");
    refused(&["eval", "--checkpoint", ck, "--memorisation-threshold", "nan"], "--memorisation-threshold");
    refused(&["lora", "merge", "--base", ck, "--lora", "x.safetensors", "--scale", "inf", "--out", "m"], "--scale");
}

/// An adapter whose metadata claims a trillion classes is refused with a message, not a panic.
#[test]
fn an_adapter_claiming_absurd_settings_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train_tiny(&run, &["train.steps=2"]);
    let best = run.join("checkpoints/step-00000002");
    let hash = difforge_core::sha256_hex(&std::fs::read(best.join("manifest.json")).unwrap());
    let meta = serde_json::json!({ "format": "difforge-lora-1", "base_sha256": hash, "lora": {}, "num_classes": 1_000_000_000_000i64 });
    let metadata = [("difforge".to_string(), meta.to_string())].into_iter().collect();
    let adapter = dir.path().join("evil.safetensors");
    difforge_nn::weights::save_with_metadata(&adapter, &[("x".to_string(), tch::Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu)))], &metadata).unwrap();
    let out = difforge()
        .args(["sample", "--checkpoint"])
        .arg(&best)
        .arg("--lora")
        .arg(&adapter)
        .args(["--n", "1", "--out"])
        .arg(dir.path().join("s.png"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !err.contains("panicked"), "{err}");
    assert!(err.contains("model.num_classes") && err.contains("evil.safetensors"), "{err}");
}
