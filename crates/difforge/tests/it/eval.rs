//! `difforge eval` end to end on a tiny trained model: every metric present and consistent,
//! the same command giving the same JSON, real features served from the cache the second time,
//! the report with its images, a folder of samples, a whole run, and clear errors.

use crate::common::{data_path, difforge, tiny_args, train_tiny, write_digit_folder};
use serde_json::Value;
use std::path::Path;

/// Small but complete settings: 24 samples, 2 seed sets, KID on 5 subsets of 10.
const SMALL: &[&str] = &["--n", "24", "--batch", "8", "--consistency-sets", "2", "--kid-subsets", "5", "--kid-subset-size", "10", "--steps", "4"];

fn eval_json(args: &[&str], extra: &[&Path]) -> (Value, Vec<u8>) {
    let mut cmd = difforge();
    cmd.arg("eval").args(args);
    for p in extra {
        cmd.arg(p);
    }
    let out = cmd.arg("--json").output().expect("runs");
    assert!(out.status.success(), "eval failed: {}", String::from_utf8_lossy(&out.stderr));
    (serde_json::from_slice(&out.stdout).expect("JSON"), out.stdout)
}

fn train_classifier(out: &Path) {
    difforge()
        .args(["classifier", "train", "--data", "digits", "--steps", "30", "--device", "cpu"])
        .args(tiny_args(&[]))
        .arg("--out")
        .arg(out)
        .assert()
        .success();
}

#[test]
fn eval_reports_every_metric_the_same_way_twice_and_caches_real_features() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    train_tiny(&run, &["train.steps=30"]);
    train_classifier(&run.join("classifier"));
    let real = tmp.path().join("real");
    write_digit_folder(&real, 3);
    let cache = tmp.path().join("cache");
    let report = tmp.path().join("report");
    let args = [
        &[
            "--checkpoint",
            run.to_str().unwrap(),
            "--data",
            real.to_str().unwrap(),
            "--split",
            "all",
            "--cache-dir",
            cache.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ],
        SMALL,
    ]
    .concat();

    let (v, first) = eval_json(&args, &[]);
    let m = &v["metrics"][0];
    assert_eq!(m["network"]["metric"], "FD-EffNet");
    assert_eq!(m["network"]["dim"], 1280);
    assert!(m["frechet_distance"].as_f64().unwrap() > 0.0);
    assert_eq!((m["samples"].as_u64(), m["real"].as_u64()), (Some(24), Some(30)));
    assert_eq!((m["kid"]["subsets"].as_u64(), m["kid"]["subset_size"].as_u64()), (Some(5), Some(10)));
    for key in ["precision", "recall", "f1", "coverage"] {
        let x = m["manifold"][key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&x), "{key} = {x}");
    }
    assert_eq!(m["manifold"]["k"], 3);
    // Class accuracy with the run's classifier (found in RUN/classifier).
    let classes = &v["classes"];
    assert_eq!(classes["samples"], 24);
    let total: u64 = classes["confusion"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap()).map(|c| c.as_u64().unwrap()).sum();
    assert_eq!(total, 24);
    assert_eq!(classes["per_class"].as_array().unwrap().len(), 10);
    // Memorisation against the model's own training split, with the held-out baseline.
    assert_eq!(v["memorisation"]["samples"], 24);
    assert_eq!(v["memorisation"]["train_images"], 4500);
    assert_eq!(v["memorisation"]["heldout_images"], 500);
    // Consistency: the same seeds give the same bits; FD on two seed sets.
    assert_eq!(v["consistency"]["same_seed_identical"], true);
    assert_eq!(v["consistency"]["repeated_images"], 8);
    assert_eq!(v["consistency"]["per_set"].as_array().unwrap().len(), 2);
    assert_eq!(v["consistency"]["per_set"][0][1], m["frechet_distance"]);

    let cached: Vec<_> = std::fs::read_dir(&cache).unwrap().flatten().collect();
    assert_eq!(cached.len(), 1, "one feature file for the one real set");
    let stamp = cached[0].metadata().unwrap().modified().unwrap();

    let (_, second) = eval_json(&args, &[]);
    assert_eq!(String::from_utf8_lossy(&first), String::from_utf8_lossy(&second), "same command, same JSON");
    assert_eq!(cached[0].metadata().unwrap().modified().unwrap(), stamp, "the cached features were reused, not rewritten");

    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    let images = html.matches("src=\"data:image/png;base64,").count();
    assert!(images >= 5, "samples, real, pairs, confusion and loss embedded; found {images}");
    for file in ["samples.png", "real.png", "closest-pairs.png", "confusion.png", "loss.png"] {
        image::open(report.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    let on_disk: Value = serde_json::from_slice(&std::fs::read(report.join("eval.json")).unwrap()).unwrap();
    assert_eq!(on_disk, v);
}

#[test]
fn identical_sample_and_real_folders_are_at_distance_zero_and_others_are_not() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    train_tiny(&run, &["train.steps=2"]);
    let digits = tmp.path().join("digits");
    write_digit_folder(&digits, 4);
    let fd = |samples: &Path| {
        let args = ["--checkpoint", run.to_str().unwrap(), "--data", digits.to_str().unwrap(), "--split", "all", "--kid-subset-size", "10", "--samples"];
        let (v, _) = eval_json(&args, &[samples]);
        assert!(v["consistency"].is_null(), "no consistency check for a folder");
        (v["metrics"][0]["frechet_distance"].as_f64().unwrap(), v)
    };
    let (same, v) = fd(&digits);
    assert!(same.abs() < 1e-6, "FD of a set with itself: {same}");
    assert_eq!(v["metrics"][0]["manifold"]["precision"], 1.0);
    // The folder's class subfolders are the classes asked for: no classifier here, so none scored.
    assert!(v["classes"].is_null());
    // Other digits (the next rows of the sheet) are further away.
    let other = tmp.path().join("other");
    let sheet = tmp.path().join("sheet");
    write_digit_folder(&sheet, 40);
    for d in 0..10 {
        std::fs::create_dir_all(other.join(d.to_string())).unwrap();
        for i in 30..34 {
            let name = format!("{i:03}.png");
            std::fs::copy(sheet.join(d.to_string()).join(&name), other.join(d.to_string()).join(&name)).unwrap();
        }
    }
    let (different, _) = fd(&other);
    assert!(different > 1.0, "FD of different digits: {different}");
}

#[test]
fn eval_of_a_run_scores_every_kept_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    train_tiny(&run, &["train.steps=20", "train.checkpoint_every=10", "train.keep_checkpoints=3"]);
    let report = tmp.path().join("report");
    let cache = tmp.path().join("cache");
    let args = [
        &["--run", run.to_str().unwrap(), "--consistency-sets", "1", "--cache-dir", cache.to_str().unwrap(), "--report", report.to_str().unwrap()],
        &SMALL[..4],
        &SMALL[6..],
    ]
    .concat();
    let (v, _) = eval_json(&args, &[]);
    let steps: Vec<u64> = v["checkpoints"].as_array().unwrap().iter().map(|c| c["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![10, 20]);
    for file in ["fd-over-steps.png", "fractions-over-steps.png", "loss.png"] {
        image::open(report.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}

/// On a fine-tune's small folder the defaults shrink to 10 samples per image in one seed set
/// (1,000 x 3 would cost a fine-tune more than its training); memorisation with `--split all`
/// compares with the training split and takes the held-out images as its baseline.
#[test]
fn eval_scales_its_defaults_to_a_small_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let (folder, run) = (tmp.path().join("few"), tmp.path().join("run"));
    write_digit_folder(&folder, 2);
    train_tiny(&run, &["train.steps=2", "data.source=\"folder\"", "data.val_fraction=0.2", &data_path(&folder)]);
    let out =
        difforge().args(["eval", "--checkpoint", run.to_str().unwrap(), "--split", "all", "--steps", "2", "--kid-subsets", "2", "--json"]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("200 samples (10 per image of the model's 20; --n to choose) in 1 seed set"), "{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["samples"]["count"], 200, "{v}");
    assert!(v["consistency"]["per_set"].as_array().is_some_and(|sets| sets.len() == 1), "{v}");
    assert_eq!(v["real"]["count"], 20, "{v}");
    let memo = &v["memorisation"];
    assert_eq!(memo["train_images"], 16, "{memo}");
    assert_eq!(memo["heldout_images"], 4, "the validation split, not the training images: {memo}");
    // Chosen by hand, the counts are kept.
    let (chosen, _) = eval_json(
        &["--checkpoint", run.to_str().unwrap(), "--split", "all", "--n", "12", "--consistency-sets", "2", "--steps", "2", "--kid-subsets", "2"],
        &[],
    );
    assert_eq!(chosen["samples"]["count"], 12);
    assert_eq!(chosen["consistency"]["per_set"].as_array().map(Vec::len), Some(2));
}

#[test]
fn eval_names_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    train_tiny(&run, &["train.steps=2"]);
    let ck = run.to_str().unwrap();
    let fails = |args: &[&str], expected: &str| {
        let out = difforge().arg("eval").args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(expected), "{args:?}: {err}");
    };
    fails(&["--checkpoint", ck, "--data", "/no/such/folder"], "/no/such/folder");
    fails(&["--checkpoint", ck, "--split", "test"], "'test' for '--split");
    fails(&["--checkpoint", ck, "--n", "1"], "--n 1");
    fails(&["--checkpoint", ck, "--sampler", "heun"], "'heun' for '--sampler");
    fails(&["--checkpoint", ck, "--effnet-weights", "/no/weights.pth"], "/no/weights.pth");
    fails(&["--checkpoint", tmp.path().join("nothing").to_str().unwrap()], "nothing");
    let junk = tmp.path().join("junk.pth");
    std::fs::write(&junk, b"not a checkpoint").unwrap();
    fails(&["--checkpoint", ck, "--inception-weights", junk.to_str().unwrap()], "junk.pth");
    // Too few real images or samples for the metrics: refused before any sample is generated.
    let digits = tmp.path().join("digits");
    write_digit_folder(&digits, 1);
    let few = tmp.path().join("few");
    for class in ["0", "1"] {
        std::fs::create_dir_all(few.join(class)).unwrap();
        for entry in std::fs::read_dir(digits.join(class)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), few.join(class).join(entry.file_name())).unwrap();
        }
    }
    let start = std::time::Instant::now();
    fails(&["--checkpoint", ck, "--data", few.to_str().unwrap(), "--split", "all", "--n", "2000"], "at least 4 real images");
    fails(&["--checkpoint", ck, "--n", "3"], "--n 3: expected at least 4 samples");
    assert!(start.elapsed().as_secs() < 60, "refused before sampling");
}

#[test]
fn training_evaluates_sample_quality_and_early_stopping_can_watch_it() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    // A min_delta no change can beat: the first evaluation is the best, the second stops the run.
    let sets = [
        "train.steps=40",
        "train.eval_every=10",
        "train.eval_samples=16",
        "train.early_stop_metric=\"eval.precision\"",
        "train.early_stop_mode=\"max\"",
        "train.early_stop_patience=1",
        "train.early_stop_min_delta=10.0",
    ];
    let out = difforge()
        .env("DIFFORGE_CACHE_DIR", tmp.path().join("cache"))
        .arg("train")
        .args(tiny_args(&sets))
        .arg("--out")
        .arg(&run)
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(tmp.path().join("cache/features").is_dir(), "real features cached where DIFFORGE_CACHE_DIR says");
    assert_eq!(summary["final_step"], 20, "{summary}");
    assert!(summary["stopped_because"].as_str().unwrap().contains("eval.precision"), "{summary}");
    assert_eq!(summary["best"]["metric"], "eval.precision");
    assert_eq!(summary["best"]["step"], 10);
    assert!(run.join("checkpoints/best").is_dir());
    let log = std::fs::read_to_string(run.join("eval.jsonl")).unwrap();
    let records: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.iter().map(|r| r["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![10, 20]);
    for key in ["fd_effnet", "kid", "precision", "recall", "f1", "density", "coverage"] {
        assert!(records[0][key].as_f64().is_some_and(f64::is_finite), "{key} in {}", records[0]);
    }
    assert_eq!(records[0]["improved"], true);
    assert_eq!(records[1]["improved"], false);

    // Evaluating draws nothing from the training streams: the same run without it has the
    // same weights at step 20, byte for byte.
    let plain = tmp.path().join("plain");
    train_tiny(&plain, &["train.steps=40", "train.checkpoint_every=20"]);
    let weights = |run: &Path| std::fs::read(run.join("checkpoints/step-00000020/model.safetensors")).unwrap();
    assert!(weights(&run) == weights(&plain), "evaluation changed the training");
}

#[test]
fn eval_metric_settings_are_checked() {
    let fails = |sets: &[&str], expected: &str| {
        let mut cmd = difforge();
        cmd.args(["config", "show"]);
        for s in sets {
            cmd.args(["--set", s]);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.code() == Some(2) && err.contains(expected), "{sets:?}: {err}");
    };
    fails(&["train.early_stop_metric=\"eval.bogus\""], "eval.fd_effnet");
    fails(&["train.early_stop_metric=\"eval.fd_effnet\""], "train.eval_every > 0");
    fails(&["train.eval_every=10", "train.early_stop_metric=\"eval.recall\""], "train.early_stop_mode = \"min\": expected \"max\"");
}

/// `difforge sweep --checkpoint`: every sampler setting evaluated on the same samples and real
/// images, ranked, with the plots and page; the same setting gives the same numbers as `eval`.
#[test]
fn a_sampler_sweep_ranks_settings_of_a_trained_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    train_tiny(&run, &["train.steps=10"]);
    let out = tmp.path().join("sweep");
    let o = difforge()
        .args(["sweep", "--checkpoint"])
        .arg(&run)
        .args([
            "--grid",
            "sample.guidance=1,3",
            "--grid",
            "sample.guidance_interval=[0.5,3.1]",
            "--n",
            "20",
            "--metric",
            "recall",
            "--device",
            "cpu",
            "--json",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let board: Value = serde_json::from_slice(&o.stdout).unwrap();
    let results = board["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(board["metric"], "recall");
    assert!(results[0]["recall"].as_f64().unwrap() >= results[1]["recall"].as_f64().unwrap());
    for r in results {
        assert_eq!(r["sampler"]["guidance_interval"], serde_json::json!([0.5, 3.1]));
    }
    for f in ["leaderboard.json", "leaderboard.md", "precision-recall.png", "report.html"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // The setting with guidance 3 gives what `difforge eval` gives for it.
    let g3 = results.iter().find(|r| r["sampler"]["guidance"] == 3.0).unwrap();
    let (e, _) =
        eval_json(&["--checkpoint", run.to_str().unwrap(), "--n", "20", "--guidance", "3", "--guidance-interval", "0.5,3.1", "--consistency-sets", "1"], &[]);
    assert_eq!(e["metrics"][0]["frechet_distance"], g3["fd_effnet"]);

    // Only sampler settings can be swept on a checkpoint.
    let bad = difforge().args(["sweep", "--checkpoint"]).arg(&run).args(["--grid", "train.lr=1e-3"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("sample.*"));
}
