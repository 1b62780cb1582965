//! A single-file checkpoint as a run's `model.base` (the tiny SD 1.5 fixture's
//! tiny-sd15.safetensors, which holds the folder's weights, with `model.base_config` giving its
//! architecture): the LoRA run trains to the same bytes as on the diffusers folder, resumes
//! exactly after SIGKILL, and takes its schedule and sampler from the file's scheduler.

use super::sd_finetune::{base, config, train, train_and_check_resume, write_config, write_shapes};
use crate::common::difforge;

#[test]
fn a_single_file_base_trains_as_its_folder_does_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shapes");
    write_shapes(&data);
    let file = base().with_extension("safetensors");
    let folder_config = config(&data, 16, true);
    let from_folder = format!("base = \"{}\"", base().display());
    assert!(folder_config.contains(&from_folder));
    // No [diffusion] schedule either: it comes from base_config's scheduler.
    let file_config = folder_config
        .replace(&from_folder, &format!("base = \"{}\"\nbase_config = \"{}\"", file.display(), base().display()))
        .replace("schedule = \"scaled_linear\"\nbeta_start = 0.00085\nbeta_end = 0.012\nprediction = \"epsilon\"\n", "");
    let (from_file, _) = train_and_check_resume(dir.path(), "file", &file_config);
    let on_folder = dir.path().join("folder");
    train(&write_config(dir.path(), "folder.toml", &folder_config), &on_folder);
    // The same weights (the exported files differ only in the base's name in their metadata).
    for name in ["model.safetensors", "ema.safetensors", "optimizer.safetensors"] {
        let read = |run: &std::path::Path| std::fs::read(run.join("checkpoints/step-00000016").join(name)).unwrap();
        assert!(read(&from_file) == read(&on_folder), "{name}: a file base trains as its folder");
    }
    let kohya = std::fs::read(from_file.join("lora.safetensors")).unwrap();
    let named = format!("\"ss_sd_model_name\":\"{}\"", file.display());
    assert!(String::from_utf8_lossy(&kohya).contains(&named), "the kohya file names the single file as its base");
    // base_config only goes with a single file, and must be a diffusers folder.
    let bad = folder_config.replace(&from_folder, &format!("{from_folder}\nbase_config = \"{}\"", base().display()));
    let out =
        difforge().arg("train").arg("--config").arg(write_config(dir.path(), "bad.toml", &bad)).arg("--out").arg(dir.path().join("bad")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("model.base_config"), "{stderr}");
}
