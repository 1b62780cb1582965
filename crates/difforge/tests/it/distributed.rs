//! Data-parallel training for real: two `difforge train` processes meet over c10d's Gloo on
//! loopback (started by `difforge launch`, or by hand with torchrun's variables), train the tiny
//! config, and must end where one process with the same global batch ends; a SIGKILLed rank
//! must end the other with an error naming it; a run checkpointed by two processes must resume
//! in one and continue as the one-process run would.

use crate::common::{difforge, tiny_args, write_digit_folder};
use std::collections::HashMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tch::Tensor;

/// 12 tiny steps on one thread per process, validated and checkpointed every 6.
const SETS: &[&str] = &["train.steps=12", "train.threads=1", "train.val_every=6", "train.checkpoint_every=6", "train.grad_accum=2"];

fn sets(extra: &[&str]) -> Vec<String> {
    let mut all: Vec<&str> = SETS.to_vec();
    all.extend_from_slice(extra);
    tiny_args(&all)
}

fn summary_of(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON summary on stdout (rank 0's)")
}

fn train_one(out: &Path, extra: &[&str]) -> serde_json::Value {
    summary_of(&difforge().arg("train").args(sets(extra)).arg("--out").arg(out).arg("--json").output().unwrap())
}

fn train_two(out: &Path, extra: &[&str]) -> serde_json::Value {
    let args = sets(extra);
    summary_of(&difforge().args(["launch", "--nproc-per-node", "2", "--", "train"]).args(args).arg("--out").arg(out).arg("--json").output().unwrap())
}

fn weights(checkpoint: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(checkpoint.join("model.safetensors")).unwrap().into_iter().collect()
}

/// The largest difference between two checkpoints' tensors relative to the tensor's largest value.
fn max_relative_difference(a: &Path, b: &Path) -> f64 {
    let (a, b) = (weights(a), weights(b));
    assert_eq!(a.len(), b.len());
    a.iter()
        .map(|(name, x)| {
            let y = &b[name];
            let scale = x.abs().max().double_value(&[]).max(1e-12);
            (x - y).abs().max().double_value(&[]) / scale
        })
        .fold(0.0, f64::max)
}

#[test]
fn two_ranks_end_where_one_process_ends_and_a_run_resumes_on_fewer_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two, resumed) = (dir.path().join("one"), dir.path().join("two"), dir.path().join("resumed"));
    let s1 = train_one(&one, &[]);
    let s2 = train_two(&two, &[]);
    assert!(s1["parallel"].is_null(), "{s1}");
    let p = &s2["parallel"];
    assert_eq!((p["world_size"].as_u64(), p["backend"].as_str()), (Some(2), Some("gloo")), "{s2}");
    let sums = p["rank_checksums"].as_array().unwrap();
    assert_eq!(sums[0], sums[1], "the ranks' weights must be equal: {sums:?}");
    let d = max_relative_difference(&one.join("checkpoints/step-00000012"), &two.join("checkpoints/step-00000012"));
    assert!(d < 1e-5, "2 ranks vs 1 process: relative difference {d}");
    let (v1, v2) = (s1["final_validation"]["val_loss"].as_f64().unwrap(), s2["final_validation"]["val_loss"].as_f64().unwrap());
    assert!((v1 - v2).abs() < 1e-5 * v1, "validation split over ranks: {v1} vs {v2}");

    // Two ranks for 6 steps, then one process from their checkpoint to step 12.
    train_two(&resumed, &["train.steps=6"]);
    let out = difforge().args(["train", "--resume"]).arg(&resumed).args(["--set", "train.steps=12", "--json"]).output().unwrap();
    let s3 = summary_of(&out);
    assert!(s3["parallel"].is_null());
    let d = max_relative_difference(&one.join("checkpoints/step-00000012"), &resumed.join("checkpoints/step-00000012"));
    assert!(d < 1e-5, "resumed at world size 1 after 6 steps at 2: relative difference {d}");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn a_killed_rank_ends_the_other_with_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let port = free_port().to_string();
    let args = tiny_args(&["train.steps=1000000", "train.threads=1", "train.val_every=0", "train.log_every=1", "train.dist_timeout_s=60"]);
    let spawn = |rank: &str| {
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("difforge"));
        cmd.arg("train").args(&args).arg("--out").arg(&out);
        cmd.envs([("RANK", rank), ("WORLD_SIZE", "2"), ("LOCAL_RANK", rank), ("LOCAL_WORLD_SIZE", "2")]);
        cmd.envs([("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", port.as_str())]);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
    };
    let rank0 = spawn("0");
    let mut rank1 = spawn("1");
    let metrics = out.join("metrics.jsonl");
    let started = Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |s| s.lines().count()) < 3 {
        assert!(started.elapsed() < Duration::from_secs(120), "the two ranks never trained");
        std::thread::sleep(Duration::from_millis(100));
    }
    rank1.kill().unwrap(); // SIGKILL
    rank1.wait().unwrap();
    let killed = Instant::now();
    let result = rank0.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success(), "rank 0 must fail when rank 1 dies");
    assert!(killed.elapsed() < Duration::from_secs(60), "rank 0 took {:?} to notice", killed.elapsed());
    assert!(stderr.contains("rank 1 stopped"), "the error names the dead rank: {stderr}");
}

/// Ranks started with WORLD_SIZE 2 and 3 both stop at the rendezvous naming the difference,
/// well within train.dist_timeout_s (rank 0 used to wait five timeouts for Gloo's mesh).
#[test]
fn ranks_started_with_different_world_sizes_stop_at_once_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    // A batch both world sizes divide, so that each rank gets as far as the rendezvous.
    let args = tiny_args(&["train.steps=4", "train.threads=1", "train.batch_size=12", "train.dist_timeout_s=60"]);
    let started = Instant::now();
    let ranks: Vec<_> = [("0", "2"), ("1", "3")]
        .into_iter()
        .map(|(rank, world)| {
            let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("difforge"));
            cmd.arg("train").args(&args).arg("--out").arg(dir.path().join("run"));
            cmd.envs([("RANK", rank), ("WORLD_SIZE", world), ("LOCAL_RANK", rank), ("LOCAL_WORLD_SIZE", world)]);
            cmd.envs([("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", port.as_str())]);
            cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for rank in ranks {
        let out = rank.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains("world=2") && stderr.contains("world=3") && stderr.contains("WORLD_SIZE"), "{stderr}");
    }
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
}

#[test]
fn two_ranks_stream_their_own_webdataset_shards() {
    let dir = tempfile::tempdir().unwrap();
    let (images, shards, val) = (dir.path().join("images"), dir.path().join("shards"), dir.path().join("val"));
    write_digit_folder(&images, 8);
    write_digit_folder(&val, 2);
    difforge().args(["data", "shard"]).arg(&images).arg("--out").arg(&shards).args(["--shard-size", "20"]).assert().success();
    let source = [
        "data.source=\"webdataset\"".to_string(),
        format!("data.path=\"{}\"", shards.display()),
        format!("data.val_path=\"{}\"", val.display()),
        "data.shuffle_buffer=16".to_string(),
    ];
    let extra: Vec<&str> = source.iter().map(String::as_str).collect();
    let s = train_two(&dir.path().join("run"), &extra);
    let sums = s["parallel"]["rank_checksums"].as_array().unwrap();
    assert_eq!(sums[0], sums[1], "{s}");
    assert!(s["final_validation"]["val_loss"].as_f64().unwrap().is_finite(), "{s}");
}

#[test]
fn nccl_on_the_cpu_and_an_uneven_batch_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = difforge()
        .args(["launch", "--nproc-per-node", "2", "--", "train"])
        .args(sets(&["train.batch_size=15"]))
        .arg("--out")
        .arg(dir.path().join("a"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("train.batch_size") && err.contains("2 processes"), "{err}");
    let out = difforge()
        .args(["launch", "--nproc-per-node", "2", "--", "train"])
        .args(sets(&["train.device=\"cpu\"", "train.dist_backend=\"nccl\""]))
        .arg("--out")
        .arg(dir.path().join("b"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("train.dist_backend") && err.contains("NCCL reduces CUDA tensors only"), "{err}");
}
