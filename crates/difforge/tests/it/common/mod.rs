//! Helpers shared by the end-to-end tests: the real binary, tiny models, real files.

use assert_cmd::Command;
use std::path::Path;

pub fn difforge() -> Command {
    let mut cmd = Command::cargo_bin("difforge").expect("the difforge binary is built");
    cmd.env("DIFFORGE_LOG", "info");
    cmd
}

/// The tiny config every test starts from (configs/tiny.toml): 8x8 digits, two levels of 16
/// channels, 2 CPU threads.
pub const TINY_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/tiny.toml");

/// `--config configs/tiny.toml` and `--set` for each of `extra`.
pub fn tiny_args(extra: &[&str]) -> Vec<String> {
    let mut args = vec!["--config".to_string(), TINY_CONFIG.to_string()];
    args.extend(extra.iter().flat_map(|s| ["--set".to_string(), s.to_string()]));
    args
}

/// `difforge train` of the tiny config with `extra` settings into `out` (`--json`), however it
/// ends.
pub fn train_tiny_output(out: &Path, extra: &[&str]) -> std::process::Output {
    difforge().arg("train").args(tiny_args(extra)).arg("--out").arg(out).arg("--json").output().expect("runs")
}

/// The `--set` value that points `data.path` at `folder`.
pub fn data_path(folder: &Path) -> String {
    format!("data.path=\"{}\"", folder.display())
}

/// Trains a tiny model into `out` and returns the parsed JSON summary.
pub fn train_tiny(out: &Path, extra: &[&str]) -> serde_json::Value {
    let output = train_tiny_output(out, extra);
    assert!(output.status.success(), "train failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("summary JSON")
}

/// The embedded digits sheet's first `per_class` digits of each class as PNG files in
/// `root/<digit>/`.
pub fn write_digit_folder(root: &Path, per_class: u32) {
    let sheet = image::load_from_memory(difforge_data::source::DIGITS_PNG).expect("sheet").to_luma8();
    for d in 0..10u32 {
        let dir = root.join(d.to_string());
        std::fs::create_dir_all(&dir).expect("mkdir");
        for i in 0..per_class {
            let cell = image::imageops::crop_imm(&sheet, (i % 100) * 20, d * 100 + (i / 100) * 20, 20, 20).to_image();
            cell.save(dir.join(format!("{i:03}.png"))).expect("write png");
        }
    }
}

/// Runs `difforge ARGS` and kills it (SIGKILL) once `run` holds a complete checkpoint of step
/// `checkpointed` and its metrics.jsonl has logged step `logged`; fails if the run ends first.
pub fn kill_mid_run(args: &[&std::ffi::OsStr], run: &Path, checkpointed: u64, logged: u64) {
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("difforge"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("difforge starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let manifest = run.join(format!("checkpoints/step-{checkpointed:08}/manifest.json"));
    let has_logged = || std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default().contains(&format!("\"step\":{logged},"));
    while !(manifest.exists() && has_logged()) {
        assert!(child.try_wait().expect("poll").is_none(), "the run ended before it could be killed");
        assert!(std::time::Instant::now() < deadline, "timed out waiting for step {logged}");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().expect("kill");
    let _ = child.wait();
}
