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
