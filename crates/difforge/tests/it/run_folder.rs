//! Nothing a user wrote is lost: a folder that holds a run is refused unless resumed or
//! explicitly overwritten, a crash while the best checkpoint was being replaced leaves one that
//! the next start restores, and a second trainer on the same folder is refused.

use crate::common::{difforge, tiny_args, train_tiny};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

fn hashes(dir: &Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file() && e.file_name() != difforge_train::run_folder::LOCK_FILE)
        .map(|e| (e.file_name().to_string_lossy().into_owned(), difforge_core::sha256_hex(&std::fs::read(e.path()).unwrap())))
        .collect();
    out.sort();
    out
}

#[test]
fn a_folder_holding_a_run_is_refused_unless_resumed_or_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train_tiny(&run, &["train.steps=4", "train.val_every=2", "train.val_images=16"]);
    // The reproduction: a copy of a run without its step-* checkpoints, best/ kept.
    let copy = dir.path().join("copy");
    copy_dir(&run, &copy);
    for e in std::fs::read_dir(copy.join("checkpoints")).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("step-") {
            std::fs::remove_dir_all(e.path()).unwrap();
        }
    }
    let (top, best) = (hashes(&copy), hashes(&copy.join("checkpoints/best")));
    let out = difforge().arg("train").args(tiny_args(&["train.steps=2"])).arg("--out").arg(&copy).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--overwrite") && err.contains("--resume") && err.contains("metrics.jsonl"), "{err}");
    assert_eq!(hashes(&copy), top, "the run's records changed");
    assert_eq!(hashes(&copy.join("checkpoints/best")), best, "the best checkpoint changed");

    let out = difforge().arg("train").args(tiny_args(&["train.steps=2"])).arg("--out").arg(&copy).args(["--overwrite", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(copy.join("checkpoints/step-00000002").is_dir());
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(copy.join("checkpoints/best/state.json")).unwrap()).unwrap();
    assert_eq!(state["step"], 2, "the best checkpoint is the new run's");
}

#[test]
fn a_crash_while_replacing_the_best_checkpoint_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train_tiny(&run, &["train.steps=4", "train.val_every=2", "train.val_images=16"]);
    let best = run.join("checkpoints/best");
    let before = hashes(&best);
    // What a crash between the two renames leaves: the old copy moved aside and the complete new
    // one under its temporary name (here both hold the same files), and no best/.
    std::fs::rename(&best, run.join("checkpoints/.tmp-old-best-4242")).unwrap();
    copy_dir(&run.join("checkpoints/.tmp-old-best-4242"), &run.join("checkpoints/.tmp-best-4242"));
    let out = difforge().args(["train", "--resume"]).arg(&run).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("restored checkpoint"), "{err}");
    assert_eq!(hashes(&best), before, "the best checkpoint was not restored");
    let left: Vec<String> = std::fs::read_dir(run.join("checkpoints")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(left.iter().all(|n| !n.starts_with(".tmp-")), "{left:?}");
    difforge().args(["sample", "--checkpoint"]).arg(&best).args(["--n", "1", "--device", "cpu", "--out"]).arg(dir.path().join("s.png")).assert().success();
}

#[test]
fn a_second_trainer_on_the_same_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let bin = assert_cmd::cargo::cargo_bin("difforge");
    let mut first = std::process::Command::new(bin)
        .arg("train")
        .args(tiny_args(&["train.steps=100000", "train.checkpoint_every=5"]))
        .arg("--out")
        .arg(&run)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !run.join("checkpoints/step-00000005").exists() {
        assert!(Instant::now() < deadline && first.try_wait().unwrap().is_none(), "the first run did not get going");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = difforge().args(["train", "--resume"]).arg(&run).output().unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    let _ = first.kill();
    let _ = first.wait();
    assert_eq!(second.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("difforge process {}", first.id())), "{err}");
    // Once the first has stopped (killed: its lock goes with it) the run resumes.
    difforge().args(["train", "--resume"]).arg(&run).args(["--set", "train.steps=6"]).assert().success();
}
