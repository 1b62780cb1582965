//! Helpers shared by the end-to-end tests: the real binary, tiny models, real files.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use assert_cmd::Command;
use std::path::Path;

pub fn difforge() -> Command {
    let mut cmd = Command::cargo_bin("difforge").expect("the difforge binary is built");
    cmd.env("DIFFORGE_LOG", "warn");
    cmd
}

/// A model small enough to train in seconds on 2 cores: 8x8 digits, two levels of 16 channels.
pub const TINY: &[&str] = &[
    "data.image_size=8",
    "model.channels=16",
    "model.channel_mult=[1,2]",
    "model.res_blocks=1",
    "model.groups=8",
    "model.heads=2",
    "train.batch_size=16",
    "train.warmup_steps=5",
    "train.log_every=5",
    "train.threads=2",
    "train.device=\"cpu\"",
    "sample.steps=5",
    "train.sample_per_class=2",
];

pub fn tiny_args(extra: &[&str]) -> Vec<String> {
    TINY.iter().chain(extra).flat_map(|s| ["--set".to_string(), s.to_string()]).collect()
}

/// Trains a tiny model into `out` and returns the parsed JSON summary.
pub fn train_tiny(out: &Path, extra: &[&str]) -> serde_json::Value {
    let output = difforge().arg("train").args(tiny_args(extra)).arg("--out").arg(out).arg("--json").output().expect("runs");
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
