//! `train.log = ["jsonl", "tensorboard"]`: event files that hold the same numbers as the JSON
//! lines, read back with the event reader (every record's CRC checked), and a resumed run that
//! starts a new file with a session start at its step.

use crate::common::{difforge, tiny_args};
use difforge_train::tensorboard::{event_files, read_events};
use std::path::Path;

fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn tensorboard_events_hold_what_the_json_lines_hold() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let sets = [
        "train.steps=10",
        "train.val_every=5",
        "train.val_images=16",
        "train.checkpoint_every=5",
        "train.sample_every=5",
        "train.log=[\"jsonl\", \"tensorboard\"]",
    ];
    let out = difforge().arg("train").args(tiny_args(&sets)).arg("--out").arg(&run).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let files = event_files(&run);
    assert_eq!(files.len(), 1, "{files:?}");
    let events = read_events(&files[0]).unwrap();
    let scalar =
        |step: u64, tag: &str| -> Option<f32> { events.iter().filter(|e| e.step == step).flat_map(|e| &e.scalars).find(|(t, _)| t == tag).map(|(_, v)| *v) };
    for rec in jsonl(&run.join("metrics.jsonl")).iter().filter(|r| r.get("loss").is_some()) {
        let step = rec["step"].as_u64().unwrap();
        assert_eq!(scalar(step, "train/loss"), Some(rec["loss"].as_f64().unwrap() as f32), "loss at step {step}");
        assert_eq!(scalar(step, "train/lr"), Some(rec["lr"].as_f64().unwrap() as f32), "lr at step {step}");
    }
    let val = jsonl(&run.join("validation.jsonl"));
    assert_eq!(val.len(), 2);
    for rec in &val {
        let step = rec["step"].as_u64().unwrap();
        assert_eq!(scalar(step, "val/loss_ema"), Some(rec["val_loss_ema"].as_f64().unwrap() as f32));
        assert_eq!(scalar(step, "val_band/00"), Some(rec["bands"][0].as_f64().unwrap() as f32));
    }
    let images: Vec<(u64, u64, u64)> = events.iter().flat_map(|e| e.images.iter().map(move |(_, w, h)| (e.step, *w, *h))).collect();
    assert_eq!(images.iter().map(|i| i.0).collect::<Vec<_>>(), vec![5, 10], "sample grids at steps 5 and 10");
    assert!(images.iter().all(|&(_, w, h)| w > 0 && h > 0));

    // Resuming for more steps opens a second file that starts a session at step 10.
    let out = difforge().args(["train", "--resume"]).arg(&run).args(["--set", "train.steps=15"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let files = event_files(&run);
    assert_eq!(files.len(), 2, "{files:?}");
    let resumed = read_events(&files[1]).unwrap();
    assert!(resumed.iter().any(|e| e.session_start && e.step == 10));
    assert!(resumed.iter().any(|e| e.step == 15 && e.scalars.iter().any(|(t, _)| t == "train/loss")));
}
