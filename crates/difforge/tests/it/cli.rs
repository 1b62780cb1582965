//! End-to-end tests of the real binary: configs, training, sampling, determinism, data sources.

use crate::common::{data_path, difforge, tiny_args, train_tiny, train_tiny_output, write_digit_folder};
use predicates::prelude::*;
use std::path::Path;

#[test]
fn info_reports_libtorch() {
    let out = difforge().args(["info", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["libtorch"].as_str().unwrap().starts_with("2.11.0"), "{v}");
    assert!(v["threads"].as_i64().unwrap() >= 1);
}

#[test]
fn config_show_prints_the_effective_config() {
    let out = difforge().args(["config", "show", "--set", "train.steps=7", "--set", "model.dropout=0.1"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let table: toml::Table = text.parse().expect("valid TOML");
    assert_eq!(table["train"]["steps"].as_integer(), Some(7));
    assert_eq!(table["model"]["dropout"].as_float(), Some(0.1));
    assert_eq!(table["data"]["source"].as_str(), Some("digits"));
    // The printed config is itself a valid config file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, &text).unwrap();
    difforge().args(["config", "show", "--config"]).arg(&path).assert().success();
}

#[test]
fn config_errors_name_the_key_and_exit_2() {
    difforge().args(["config", "show", "--set", "train.stepz=3"]).assert().code(2).stderr(predicate::str::contains("stepz"));
    difforge().args(["config", "show", "--set", "train.batch_size=\"big\""]).assert().code(2).stderr(predicate::str::contains("train.batch_size"));
    difforge()
        .args(["config", "show", "--set", "diffusion.schedule=\"square\""])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("diffusion.schedule").and(predicate::str::contains("cosine")));
    difforge()
        .args(["config", "show", "--set", "data.image_size=20", "--set", "model.channel_mult=[1,2,2,2]"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("model.image_size"));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[train\nsteps = 1").unwrap();
    difforge().args(["config", "show", "--config"]).arg(&bad).assert().code(2).stderr(predicate::str::contains("bad.toml"));
}

fn png_size(path: &Path) -> (u32, u32) {
    image::image_dimensions(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn train_then_sample_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let summary = train_tiny(&run, &["train.steps=12", "train.checkpoint_every=5", "train.keep_checkpoints=2"]);
    assert_eq!(summary["final_step"], 12);
    assert!(summary["final_loss"].as_f64().unwrap().is_finite());
    for f in ["config.toml", "metrics.jsonl", "summary.json"] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    // Checkpoints at 5, 10 and 12; the oldest pruned (keep 2); the best (by the validation at the
    // last step) kept apart.
    let mut ckpts: Vec<String> = std::fs::read_dir(run.join("checkpoints")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    ckpts.sort();
    assert_eq!(ckpts, vec!["best", "step-00000010", "step-00000012"]);
    let lines = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = lines.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![5, 10, 12]);
    // The final sample grid: 10 classes x 2 per class at 8x8 with a 2-pixel border.
    assert_eq!(png_size(&run.join("samples/step-00000012.png")), (2 * 10 + 2, 10 * 10 + 2));

    for sampler in ["ddpm", "ddim", "dpm++2m"] {
        let grid = dir.path().join(format!("{sampler}.png"));
        let singles = dir.path().join(format!("{sampler}-single"));
        let out = difforge()
            .args(["sample", "--checkpoint"])
            .arg(&run)
            .args(["--n", "5", "--sampler", sampler, "--steps", "4", "--class", "3", "--seed", "9", "--json", "--out"])
            .arg(&grid)
            .arg("--out-dir")
            .arg(&singles)
            .output()
            .unwrap();
        assert!(out.status.success(), "{sampler}: {}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["images"], 5);
        assert_eq!(png_size(&grid), (3 * 10 + 2, 2 * 10 + 2));
        assert_eq!(std::fs::read_dir(&singles).unwrap().count(), 5);
        assert_eq!(png_size(&singles.join("sample-00000.png")), (8, 8));
    }
    // A checkpoint folder works as well as a run folder, and the same seed gives the same bytes.
    let a = dir.path().join("a.png");
    let b = dir.path().join("b.png");
    difforge()
        .args(["sample", "--checkpoint"])
        .arg(run.join("checkpoints/step-00000012"))
        .args(["--n", "4", "--seed", "3", "--out"])
        .arg(&a)
        .assert()
        .success();
    difforge().args(["sample", "--checkpoint"]).arg(&run).args(["--n", "4", "--seed", "3", "--out"]).arg(&b).assert().success();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    // Bad sampling input is refused clearly.
    difforge()
        .args(["sample", "--checkpoint"])
        .arg(&run)
        .args(["--class", "10", "--out"])
        .arg(&a)
        .assert()
        .failure()
        .stderr(predicate::str::contains("--class 10"));
    difforge()
        .args(["sample", "--checkpoint"])
        .arg(dir.path())
        .args(["--out"])
        .arg(&a)
        .assert()
        .failure()
        .stderr(predicate::str::contains("neither a checkpoint"));
    // A second train into the same folder is refused instead of mixing runs.
    difforge().arg("train").args(tiny_args(&["train.steps=1"])).arg("--out").arg(&run).assert().failure().stderr(predicate::str::contains("--resume"));
}

#[test]
fn same_config_and_seed_give_bit_identical_weights() {
    let dir = tempfile::tempdir().unwrap();
    let extra = ["train.steps=8", "model.dropout=0.1", "data.augment.rotate=0.5", "data.augment.scale_crop=0.5"];
    let a = train_tiny(&dir.path().join("a"), &extra);
    let b = train_tiny(&dir.path().join("b"), &extra);
    let c = train_tiny(&dir.path().join("c"), &[&extra[..], &["seed=1"]].concat());
    assert_eq!(a["weights_checksum"], b["weights_checksum"]);
    assert_ne!(a["weights_checksum"], c["weights_checksum"]);
    let read = |run: &str| std::fs::read(dir.path().join(run).join("checkpoints/step-00000008/model.safetensors")).unwrap();
    assert!(read("a") == read("b"), "the weight files differ");
    assert!(read("a") != read("c"));
}

#[test]
fn folder_source_skips_corrupt_files_and_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("digits");
    write_digit_folder(&data, 6);
    std::fs::write(data.join("3/broken.png"), b"\x89PNG\r\n\x1a\nthis is not a png").unwrap();
    std::fs::write(data.join("7/empty.jpg"), b"").unwrap();
    std::fs::write(data.join("3/003.txt"), "a caption").unwrap();
    let out = train_tiny_output(&dir.path().join("run"), &["train.steps=3", "data.source=\"folder\"", "data.val_fraction=0.2", &data_path(&data)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("broken.png") && stderr.contains("empty.jpg"), "{stderr}");
    assert!(stderr.contains("2 of 62"), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["skipped_files"], 2);
    assert_eq!(summary["train_images"].as_u64().unwrap() + summary["val_images"].as_u64().unwrap(), 60);

    // A folder with no usable image is a clear error, not a crash.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(empty.join("a")).unwrap();
    std::fs::write(empty.join("a/x.png"), b"nope").unwrap();
    difforge()
        .arg("train")
        .args(tiny_args(&["data.source=\"folder\""]))
        .arg("--set")
        .arg(format!("data.path=\"{}\"", empty.display()))
        .arg("--out")
        .arg(dir.path().join("run2"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("no usable image").and(predicate::str::contains("1 file(s) skipped")));
}

#[test]
fn every_shipped_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            difforge().args(["config", "show", "--config"]).arg(&path).assert().success();
            seen += 1;
        }
    }
    assert!(seen >= 3, "expected digits, fashion-mnist and emoji64 configs in {}", dir.display());
}
