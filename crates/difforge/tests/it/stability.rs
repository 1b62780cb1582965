//! Stability: exact resume after SIGKILL and SIGTERM, corrupt checkpoints, non-finite steps,
//! early stopping. All on the real binary with tiny models.

use crate::common::{difforge, tiny_args, train_tiny};
use predicates::prelude::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const N: u64 = 24;

fn resume_args() -> Vec<&'static str> {
    vec!["train.batch_size=32", "train.log_every=1", "model.dropout=0.1", "data.augment.rotate=0.5", "train.val_every=8", "train.val_images=32"]
}

fn file(run: &Path, step: u64, name: &str) -> Vec<u8> {
    let p = run.join(format!("checkpoints/step-{step:08}/{name}"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn assert_same_final_state(a: &Path, b: &Path, step: u64) {
    for name in ["model.safetensors", "ema.safetensors", "optimizer.safetensors"] {
        assert!(file(a, step, name) == file(b, step, name), "{name} differs between {} and {}", a.display(), b.display());
    }
}

fn spawn_train(out: &Path, extra: &[&str], stdout: Stdio) -> Child {
    let bin = assert_cmd::cargo::cargo_bin("difforge");
    std::process::Command::new(bin).arg("train").args(tiny_args(extra)).arg("--out").arg(out).stdout(stdout).stderr(Stdio::null()).spawn().expect("spawn")
}

/// The last step recorded in metrics.jsonl.
fn logged_step(run: &Path) -> u64 {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["step"].as_u64()).max().unwrap_or(0)
}

/// Waits until checkpoint N exists and the run has logged step `after`, then signals it.
fn signal_after(child: &mut Child, run: &Path, after: u64, signal: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let ckpt = run.join(format!("checkpoints/step-{N:08}/manifest.json"));
    while !(ckpt.exists() && logged_step(run) >= after) {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before step {after}");
        assert!(Instant::now() < deadline, "timed out waiting for step {after}");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be signalled");
    let status = std::process::Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

/// The settings of a 2N-step run with a checkpoint at N, and that run done uninterrupted.
fn reference_run(dir: &Path) -> (Vec<String>, PathBuf) {
    let mut extra: Vec<String> = resume_args().into_iter().map(str::to_string).collect();
    extra.push(format!("train.steps={}", 2 * N));
    extra.push(format!("train.checkpoint_every={N}"));
    let reference = dir.join("reference");
    train_tiny(&reference, &extra.iter().map(String::as_str).collect::<Vec<_>>());
    (extra, reference)
}

fn resume(run: &Path, extra: &[&str]) -> std::process::Output {
    let sets: Vec<String> = extra.iter().flat_map(|s| ["--set".to_string(), s.to_string()]).collect();
    difforge().arg("train").arg("--resume").arg(run).args(sets).output().unwrap()
}

#[test]
fn sigkill_then_resume_ends_bit_identical_at_three_kill_moments() {
    let dir = tempfile::tempdir().unwrap();
    let (extra, reference) = reference_run(dir.path());
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();

    // Kill moments: just after the checkpoint, in the middle, and just before the end, each
    // with a random extra delay.
    let jitter = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    for (i, after) in [N + 1, N + N / 2, 2 * N - 2].into_iter().enumerate() {
        let run: PathBuf = dir.path().join(format!("killed-{i}"));
        let mut child = spawn_train(&run, &extra, Stdio::null());
        signal_after(&mut child, &run, after, "KILL");
        std::thread::sleep(Duration::from_millis((jitter >> (i * 4)) % 7));
        let _ = child.wait();
        let out = resume(&run, &[]);
        assert!(out.status.success(), "resume failed: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("resuming from {}", run.join(format!("checkpoints/step-{N:08}")).display())));
        assert_same_final_state(&reference, &run, 2 * N);
        // The metrics of the redone steps are not duplicated.
        let steps: Vec<u64> = std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["step"].as_u64())
            .collect();
        assert_eq!(steps, (1..=2 * N).collect::<Vec<_>>(), "kill {i}");
    }
}

#[test]
fn sigterm_checkpoints_exits_zero_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (extra, reference) = reference_run(dir.path());
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();

    let run = dir.path().join("terminated");
    let mut child = spawn_train(&run, &extra, Stdio::piped());
    signal_after(&mut child, &run, N + 3, "TERM");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "SIGTERM should end the run cleanly");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("interrupted at step") && stdout.contains("difforge train --resume"), "{stdout}");
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    let stopped = summary["final_step"].as_u64().unwrap();
    assert!(stopped > N && stopped < 2 * N, "stopped at {stopped}");
    assert!(run.join(format!("checkpoints/step-{stopped:08}/manifest.json")).exists());
    assert!(resume(&run, &[]).status.success());
    assert_same_final_state(&reference, &run, 2 * N);
}

#[test]
fn a_flipped_byte_is_refused_and_resume_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference");
    // A constant learning rate, so that a 20-step run extended to 30 is the 30-step run.
    train_tiny(&reference, &["train.steps=30", "train.checkpoint_every=10", "train.lr_schedule=\"constant\""]);
    let run = dir.path().join("run");
    train_tiny(&run, &["train.steps=20", "train.checkpoint_every=10", "train.lr_schedule=\"constant\""]);
    let target = run.join("checkpoints/step-00000020/model.safetensors");
    let mut bytes = std::fs::read(&target).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&target, bytes).unwrap();

    difforge()
        .args(["sample", "--checkpoint"])
        .arg(run.join("checkpoints/step-00000020"))
        .arg("--out")
        .arg(dir.path().join("x.png"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("model.safetensors").and(predicate::str::contains("SHA-256")));
    let out = resume(&run, &["train.steps=30"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("refusing checkpoint") && stderr.contains("step-00000010"), "{stderr}");
    assert_same_final_state(&reference, &run, 30);
}

#[test]
fn nan_steps_are_skipped_then_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let s = train_tiny(&run, &["train.steps=20", "train.checkpoint_every=10", "train.debug_nan_steps=[12,13,14]", "train.max_bad_steps=3"]);
    assert_eq!(s["final_step"], 20);
    assert_eq!(s["skipped_steps"], 3);
    assert_eq!(s["rollbacks"], 1);
    assert_eq!(s["diverged"], false);
    assert!(s["final_loss"].as_f64().unwrap().is_finite());
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("checkpoints/step-00000020/state.json")).unwrap()).unwrap();
    assert_eq!(state["lr_scale"], 0.5);
    let events = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(events.matches("\"skipped_step\"").count(), 3);
    assert_eq!(events.matches("\"rollback\"").count(), 1);

    // With no rollback allowed the run stops, says why, and exits non-zero.
    let out = difforge()
        .arg("train")
        .args(tiny_args(&["train.steps=20", "train.checkpoint_every=10", "train.debug_nan_steps=[12,13]", "train.max_bad_steps=2", "train.max_rollbacks=0"]))
        .arg("--out")
        .arg(dir.path().join("diverged"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("training diverged"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn early_stopping_stops_a_plateau_and_keeps_the_best_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // A learning rate so small that the validation loss cannot move by min_delta.
    let s = train_tiny(
        &run,
        &[
            "train.steps=200",
            "train.lr=1e-7",
            "train.warmup_steps=0",
            "train.val_every=5",
            "train.val_images=32",
            "train.early_stop_patience=3",
            "train.early_stop_min_delta=0.001",
        ],
    );
    assert!(s["stopped_because"].as_str().unwrap().starts_with("early stopping"), "{s}");
    assert_eq!(s["final_step"], 20, "best at the first validation (5), then 3 without improvement");
    let vals: Vec<serde_json::Value> =
        std::fs::read_to_string(run.join("validation.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(vals.len(), 4);
    assert_eq!(vals[0]["bands"].as_array().unwrap().len(), 10);
    let best_state: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("checkpoints/best/state.json")).unwrap()).unwrap();
    assert_eq!(best_state["best"]["step"], s["best"]["step"]);
    assert_eq!(best_state["step"], s["best"]["step"]);

    // A run that keeps improving: the best checkpoint is the one with the lowest validation loss.
    let run2 = dir.path().join("improving");
    let s2 = train_tiny(&run2, &["train.steps=30", "train.val_every=5", "train.val_images=32", "train.lr=3e-3"]);
    let vals: Vec<serde_json::Value> =
        std::fs::read_to_string(run2.join("validation.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let (best_step, best_value) =
        vals.iter().map(|v| (v["step"].as_u64().unwrap(), v["val_loss_ema"].as_f64().unwrap())).fold((0, f64::INFINITY), |a, b| if b.1 < a.1 { b } else { a });
    assert_eq!(s2["best"]["step"], best_step);
    assert_eq!(s2["best"]["value"], best_value);
    // A run folder resolves to its best checkpoint for sampling.
    let out = difforge().args(["sample", "--checkpoint"]).arg(&run2).args(["--n", "2", "--json", "--out"]).arg(dir.path().join("b.png")).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["checkpoint"].as_str().unwrap().ends_with("checkpoints/best"), "{report}");
}

#[test]
fn sweep_ranks_trials_and_halving_continues_the_better_half() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep");
    let run = difforge()
        .arg("sweep")
        .args(tiny_args(&["train.val_every=4", "train.val_images=32"]))
        .args(["--grid", "train.lr=1e-6,3e-3,1e-3,1e-5", "--budget-steps", "8", "--halving", "--json", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let board: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let trials = board["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 4);
    let values: Vec<f64> = trials.iter().map(|t| t["value"].as_f64().unwrap()).collect();
    assert!(values.windows(2).all(|w| w[0] <= w[1]), "not sorted: {values:?}");
    // Rungs of 2, 4 and 8 steps: 4 trials, then the best 2, then the best 1.
    let mut steps: Vec<u64> = trials.iter().map(|t| t["steps"].as_u64().unwrap()).collect();
    steps.sort_unstable();
    assert_eq!(steps, vec![2, 2, 4, 8]);
    assert_eq!(trials[0]["steps"], 8);
    // The tiny learning rates cannot win.
    assert!(!trials[0]["settings"][0].as_str().unwrap().ends_with("1e-6"));
    let md = std::fs::read_to_string(out.join("leaderboard.md")).unwrap();
    assert_eq!(md.lines().count(), 2 + 4);
}

#[test]
fn a_separate_validation_folder_is_used_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (train, val) = (dir.path().join("train"), dir.path().join("val"));
    crate::common::write_digit_folder(&train, 4);
    crate::common::write_digit_folder(&val, 3);
    let run = dir.path().join("run");
    let out = difforge()
        .arg("train")
        .args(tiny_args(&["train.steps=2", "train.val_every=2", "data.source=\"folder\""]))
        .args(["--set", &format!("data.path=\"{}\"", train.display()), "--set", &format!("data.val_path=\"{}\"", val.display()), "--json", "--out"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["train_images"], 40);
    let v: serde_json::Value = serde_json::from_str(std::fs::read_to_string(run.join("validation.jsonl")).unwrap().lines().last().unwrap()).unwrap();
    assert_eq!(v["pairs"], 30 * 2);
}
