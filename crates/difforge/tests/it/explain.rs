//! `difforge explain` on the real binary: every view and the self-contained report.

use crate::common::{difforge, train_tiny};
use predicates::prelude::*;

#[test]
fn explain_report_writes_every_view() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train_tiny(&run, &["train.steps=4", "model.attention_resolutions=[4]"]);
    let out = dir.path().join("explain");
    let r = difforge()
        .args(["explain", "--checkpoint"])
        .arg(&run)
        .args(["report", "--class", "2", "--n", "2", "--show", "3", "--json", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["trajectory"]["shown_steps"].as_array().unwrap().len(), 3);
    assert_eq!(v["neighbours"]["nearest"].as_array().unwrap().len(), 2);
    for f in ["trajectory.png", "trajectory.gif", "timesteps.png", "attribution.png", "attention.png", "neighbours.png", "report.html"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert_eq!(html.matches("data:image/png;base64,").count(), 5);
    assert_eq!(html.matches("data:image/gif;base64,").count(), 1);
    // Bad input is refused clearly.
    difforge()
        .args(["explain", "--checkpoint"])
        .arg(&run)
        .args(["attention", "--pixel", "9,1", "--out"])
        .arg(&out)
        .assert()
        .failure()
        .stderr(predicate::str::contains("--pixel 9,1"));
    difforge()
        .args(["explain", "--checkpoint"])
        .arg(&run)
        .args(["trajectory", "--class", "12", "--out"])
        .arg(&out)
        .assert()
        .failure()
        .stderr(predicate::str::contains("--class 12"));
}
