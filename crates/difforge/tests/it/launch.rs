//! `difforge launch`: one process per rank with torchrun's variables (seen through `difforge
//! info`'s world line), failures that stop every rank, signals passed on, bad arguments.

use crate::common::{difforge, train_tiny};
use predicates::prelude::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `world` lines of `difforge info` in the output, sorted (the ranks print in any order).
fn world_lines(stdout: &[u8]) -> Vec<String> {
    let mut lines: Vec<String> = String::from_utf8_lossy(stdout).lines().filter_map(|l| l.strip_prefix("world").map(|w| w.trim().to_string())).collect();
    lines.sort();
    lines
}

#[test]
fn each_rank_gets_its_place() {
    let out = difforge().args(["launch", "--nproc-per-node", "2", "--", "info"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = world_lines(&out.stdout);
    assert_eq!(lines.len(), 2, "{lines:?}");
    // One free port, shared by both ranks.
    let port = lines[0].rsplit_once(':').map(|(_, p)| p.to_string()).unwrap();
    assert!(port.parse::<u16>().unwrap() > 0);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line, &format!("rank {i} of 2 (local {i} of 2), difforge, master 127.0.0.1:{port}"));
    }
}

#[test]
fn the_second_node_gets_the_upper_ranks() {
    let out =
        difforge().args(["launch", "--nproc-per-node", "2", "--nnodes", "2", "--node-rank", "1", "--master", "10.1.2.3:29400", "--", "info"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        world_lines(&out.stdout),
        vec!["rank 2 of 4 (local 0 of 2), difforge, master 10.1.2.3:29400", "rank 3 of 4 (local 1 of 2), difforge, master 10.1.2.3:29400"]
    );
}

#[test]
fn info_json_reports_the_world() {
    let out = difforge().args(["info", "--json"]).env_remove("RANK").env_remove("WORLD_SIZE").env_remove("SLURM_NTASKS").output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["world"]["rank"].as_u64(), v["world"]["size"].as_u64(), v["world"]["launcher"].as_str()), (Some(0), Some(1), Some("single")));
    let torchrun = [("RANK", "3"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "1"), ("LOCAL_WORLD_SIZE", "2"), ("MASTER_ADDR", "h0"), ("MASTER_PORT", "29500")];
    let out = difforge().args(["info", "--json"]).envs(torchrun).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["world"]["rank"].as_u64(), v["world"]["local_size"].as_u64(), v["world"]["launcher"].as_str()), (Some(3), Some(2), Some("torchrun")));
    // A broken environment is shown, not fatal: info is where one looks.
    let out = difforge().args(["info", "--json"]).env("RANK", "3").env_remove("WORLD_SIZE").output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["world"]["error"].as_str().unwrap().contains("WORLD_SIZE"), "{v}");
}

#[test]
fn a_failing_rank_fails_the_launch_and_is_named() {
    difforge()
        .args(["launch", "--nproc-per-node", "2", "--", "sample", "--no-such-flag"])
        .assert()
        .code(1)
        .stderr(predicate::str::is_match(r"rank [01] of 2 failed \(exit status: 2\)").unwrap());
}

#[test]
fn bad_arguments_exit_2() {
    for (args, message) in [
        (&["--nproc-per-node", "0", "--", "info"][..], "--nproc-per-node 0"),
        (&["--nproc-per-node", "2"][..], "after `--`"),
        (&["--nproc-per-node", "2", "--nnodes", "2", "--node-rank", "2", "--master", "h:1", "--", "info"][..], "--node-rank 2"),
        (&["--nproc-per-node", "2", "--nnodes", "2", "--", "info"][..], "--master: required"),
        (&["--nproc-per-node", "2", "--master", "h", "--", "info"][..], "ADDR:PORT"),
        (&["--nproc-per-node", "1", "--", "launch", "--nproc-per-node", "1", "--", "info"][..], "other than launch"),
        (&["--nproc-per-node", "two", "--", "info"][..], "--nproc-per-node"),
    ] {
        difforge().arg("launch").args(args).assert().code(2).stderr(predicate::str::contains(message));
    }
}

/// Kills the launcher (and so stops waiting) if a test fails half-way.
struct Launched(Child);

impl Drop for Launched {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The launcher's exit status, within `limit`.
fn wait_for(launched: &mut Launched, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = launched.0.try_wait().unwrap() {
            return status;
        }
        assert!(start.elapsed() < limit, "the launcher still runs after {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn launch_servers(run: &std::path::Path, bind: &str) -> Launched {
    let cache = run.parent().unwrap().join("cache");
    Launched(
        Command::new(assert_cmd::cargo::cargo_bin("difforge"))
            .env("DIFFORGE_CACHE_DIR", cache)
            .args(["launch", "--nproc-per-node", "2", "--", "serve", "--no-auth", "--device", "cpu", "--bind", bind, "--checkpoint"])
            .arg(run)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// Two servers that never end on their own: SIGTERM to the launcher reaches both (they shut
/// down cleanly, so the launch succeeds); when one cannot bind the port the other holds, the
/// launch stops the survivor and fails naming the rank.
#[test]
fn ranks_stop_together() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train_tiny(&run, &["train.steps=2"]);

    let mut launched = launch_servers(&run, "127.0.0.1:0");
    let mut stdout = BufReader::new(launched.0.stdout.take().unwrap());
    for _ in 0..2 {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(line.starts_with("listening on "), "{line:?}");
    }
    let killed = Command::new("kill").args(["-s", "TERM", &launched.0.id().to_string()]).status().unwrap();
    assert!(killed.success());
    assert!(wait_for(&mut launched, Duration::from_secs(60)).success());

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut launched = launch_servers(&run, &format!("127.0.0.1:{port}"));
    let status = wait_for(&mut launched, Duration::from_secs(60));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut launched.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Address already in use") && stderr.contains("failed (exit status: 1)"), "{stderr}");
}
