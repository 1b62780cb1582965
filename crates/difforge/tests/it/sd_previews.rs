//! Preview prompts from a file in kohya's format (the tiny SD 1.5 fixture): each line with its
//! own seed, size, steps, guidance and negative prompt, one grid per size; previews leave the
//! training's weights byte-identical; a bad line is refused before training, named by file
//! and line.

use super::sd_finetune::{config, train, write_config, write_shapes};
use crate::common::difforge;
use std::path::Path;

fn with_prompt_file(data: &Path, file: &Path, sample_every: u64) -> String {
    config(data, 8, true)
        .replace("preview_prompts = [\"a red square\", \"a blue circle\"]", &format!("preview_prompt_file = \"{}\"", file.display()))
        .replace("sample_per_class = 2", &format!("sample_per_class = 2\nsample_every = {sample_every}"))
}

#[test]
fn a_prompt_file_previews_each_line_with_its_settings_and_leaves_training_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shapes");
    write_shapes(&data);
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "# two sizes\na red square --d 7 --s 3 --l 2.0\na blue circle --n a red square --w 48 --h 32\n").unwrap();
    let previewed = dir.path().join("previewed");
    train(&write_config(dir.path(), "previewed.toml", &with_prompt_file(&data, &prompts, 4)), &previewed);
    // The 32x32 line in the main grid, the 48x32 one in its own: two images (a row) each.
    for (file, (w, h)) in [("step-00000004.png", (32, 32)), ("step-00000004-48x32.png", (48, 32)), ("step-00000008.png", (32, 32))] {
        let grid = image::open(previewed.join("samples").join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(grid.width() >= 2 * w && grid.width() < 3 * w && grid.height() >= h && grid.height() < 2 * h, "{file}: {}x{}", grid.width(), grid.height());
    }
    let quiet = dir.path().join("quiet");
    train(&write_config(dir.path(), "quiet.toml", &with_prompt_file(&data, &prompts, 0)), &quiet);
    let weights = |run: &Path| std::fs::read(run.join("checkpoints/step-00000008/model.safetensors")).unwrap();
    assert!(weights(&previewed) == weights(&quiet), "previews must not change the training");
    // A line the model cannot draw is refused before any step, with its file and line.
    std::fs::write(&prompts, "a red square\na blue circle --w 30\n").unwrap();
    let cfg = write_config(dir.path(), "bad.toml", &with_prompt_file(&data, &prompts, 4));
    let out = difforge().arg("train").arg("--config").arg(&cfg).arg("--out").arg(dir.path().join("bad")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("model.preview_prompt_file") && stderr.contains("prompt 2"), "{stderr}");
    assert!(!dir.path().join("bad/checkpoints").exists());
}
