//! `difforge finetune`, `difforge lora merge` and `difforge sample --lora` on the real binary.

use crate::common::{difforge, train_tiny, write_digit_folder};
use predicates::prelude::*;

#[test]
fn lora_finetune_merge_and_sample_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    train_tiny(&base, &["train.steps=4"]);
    let data = dir.path().join("style");
    write_digit_folder(&data, 3);
    std::fs::create_dir_all(data.join("star")).unwrap();
    std::fs::copy(data.join("1/000.png"), data.join("star/000.png")).unwrap();

    let ft = dir.path().join("ft");
    let out = difforge()
        .args(["finetune", "--from"])
        .arg(&base)
        .arg("--data")
        .arg(&data)
        .args(["--set", "train.steps=3", "--set", "lora.targets=[\"attention\",\"conv\"]", "--json", "--out"])
        .arg(&ft)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("new class `star` (label 10)"), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let adapter = summary["adapter"].as_str().unwrap().to_string();
    let cfg: toml::Table = std::fs::read_to_string(ft.join("config.toml")).unwrap().parse().unwrap();
    assert_eq!(cfg["model"]["num_classes"].as_integer(), Some(11));

    // Sampling the new class with the unmerged adapter, and from a merged checkpoint.
    let a = dir.path().join("a.png");
    difforge()
        .args(["sample", "--checkpoint"])
        .arg(&base)
        .args(["--lora", &adapter, "--lora-scale", "0.5", "--class", "10", "--n", "2", "--out"])
        .arg(&a)
        .assert()
        .success();
    let merged = dir.path().join("merged");
    difforge().args(["lora", "merge", "--base"]).arg(&base).args(["--lora", &adapter, "--scale", "0.5", "--out"]).arg(&merged).assert().success();
    assert!(merged.join("manifest.json").exists());
    let b = dir.path().join("b.png");
    difforge().args(["sample", "--checkpoint"]).arg(&merged).args(["--class", "10", "--n", "2", "--out"]).arg(&b).assert().success();
    // Without the adapter the base has no class 10.
    difforge()
        .args(["sample", "--checkpoint"])
        .arg(&base)
        .args(["--class", "10", "--out"])
        .arg(&a)
        .assert()
        .failure()
        .stderr(predicate::str::contains("--class 10"));

    // The server applies the adapter too: the new class exists there.
    let mut server = std::process::Command::new(assert_cmd::cargo::cargo_bin("difforge"))
        .args(["serve", "--bind", "127.0.0.1:0", "--device", "cpu", "--no-auth", "--checkpoint"])
        .arg(&base)
        .args(["--lora", &adapter])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(server.stdout.take().unwrap()), &mut line).unwrap();
    let Some(base_url) = line.trim().strip_prefix("listening on ") else {
        let _ = server.kill();
        panic!("the server did not start (first line {line:?}); exit status {:?}", server.wait());
    };
    let url = format!("{base_url}/v1/generate");
    let status = match ureq::post(&url).send_string(r#"{"class": 10, "steps": 2}"#) {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("{e}"),
    };
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(status, 200);

    // A full fine-tune trains every weight and writes no adapter.
    let full = difforge()
        .args(["finetune", "--method", "full", "--from"])
        .arg(&base)
        .arg("--data")
        .arg(&data)
        .args(["--set", "train.steps=2", "--json", "--out"])
        .arg(dir.path().join("full"))
        .output()
        .unwrap();
    assert!(full.status.success(), "{}", String::from_utf8_lossy(&full.stderr));
    let s: serde_json::Value = serde_json::from_slice(&full.stdout).unwrap();
    assert!(s["adapter"].is_null());
}
