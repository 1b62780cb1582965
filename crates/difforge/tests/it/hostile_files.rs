//! Broken or hostile model files a user may be handed: each is refused with exit code 2 and a
//! message naming the file and the field, before anything is allocated from it, instead of a
//! panic, an abort or a silently wrong image.

use super::sd_finetune::{base, copy_dir};
use crate::common::difforge;
use std::path::{Path, PathBuf};

/// A copy of the tiny SD 1.5 folder in `dir` with `edit` applied to the JSON file `file`.
fn edited_copy(dir: &Path, name: &str, file: &str, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let copy = dir.join(name);
    copy_dir(&base(), &copy);
    let path = copy.join(file);
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    copy
}

/// `difforge ARGS` must exit 2, without a panic, naming each of `expected`.
fn refused(args: &[&std::ffi::OsStr], expected: &[&str]) {
    let out = difforge().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    for e in expected {
        assert!(err.contains(e), "{e} in {args:?}: {err}");
    }
}

fn sample_args(model: &Path, out: &Path) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec!["sample".into(), "--checkpoint".into(), model.into()];
    args.extend(["--prompt", "a cat", "--steps", "2", "--out"].map(Into::into));
    args.push(out.into());
    args
}

/// A change made to a config.json.
type Edit = dyn Fn(&mut serde_json::Value);

#[test]
fn config_values_out_of_range_are_refused_by_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let set = |key: &'static str, value: serde_json::Value| move |json: &mut serde_json::Value| json[key] = value.clone();
    let cases: Vec<(&str, &str, Box<Edit>, &str)> = vec![
        ("groups", "unet/config.json", Box::new(set("norm_num_groups", 0.into())), "norm_num_groups = 0"),
        ("layers", "unet/config.json", Box::new(set("layers_per_block", 100_000.into())), "layers_per_block = 100000"),
        (
            "wide",
            "unet/config.json",
            Box::new(|j: &mut serde_json::Value| {
                j["block_out_channels"] = serde_json::json!(vec![8192; 8]);
                j["down_block_types"] = serde_json::json!(vec!["DownBlock2D"; 8]);
                j["up_block_types"] = serde_json::json!(vec!["UpBlock2D"; 8]);
                j["layers_per_block"] = 32.into();
            }),
            "GB of float32 weights",
        ),
        ("timesteps", "scheduler/scheduler_config.json", Box::new(set("num_train_timesteps", 1_000_000_000_000u64.into())), "num_train_timesteps"),
        (
            "betas",
            "scheduler/scheduler_config.json",
            Box::new(|j: &mut serde_json::Value| {
                j["beta_start"] = 0.5.into();
                j["beta_end"] = 2.0.into();
            }),
            "beta_end = 2",
        ),
        (
            "decreasing",
            "scheduler/scheduler_config.json",
            Box::new(|j: &mut serde_json::Value| {
                j["beta_start"] = 0.02.into();
                j["beta_end"] = 0.001.into();
            }),
            "more than beta_start",
        ),
        ("positions", "text_encoder/config.json", Box::new(set("max_position_embeddings", 1_000_000_000.into())), "max_position_embeddings = 1000000000"),
        ("vae", "vae/config.json", Box::new(set("norm_num_groups", 0.into())), "norm_num_groups = 0"),
    ];
    for (name, file, edit, expected) in cases {
        let model = edited_copy(dir.path(), name, file, edit);
        let out = dir.path().join(format!("{name}.png"));
        let args = sample_args(&model, &out);
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        refused(&args, &[file, expected]);
        assert!(!out.exists(), "{name}: no image");
    }
    // convert reads the same files the same way.
    let model = edited_copy(dir.path(), "convert", "unet/config.json", set("norm_num_groups", 0.into()));
    let single = dir.path().join("single.safetensors");
    refused(
        &["convert".as_ref(), "--from".as_ref(), model.as_os_str(), "--to".as_ref(), "single-file".as_ref(), "--out".as_ref(), single.as_os_str()],
        &["unet/config.json", "norm_num_groups = 0"],
    );
}

/// `--prompts` reads a bounded amount (a stream such as /dev/zero was read whole, 2.4 GB in a
/// second) and every refusal names the file.
#[test]
fn prompt_files_are_read_within_a_limit_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let (out, model) = (dir.path().join("x.png"), base());
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "\n  \n").unwrap();
    let not_utf8 = dir.path().join("latin1.txt");
    std::fs::write(&not_utf8, b"a caf\xe9\n").unwrap();
    for (file, expected) in
        [(Path::new("/dev/zero"), "at most 16777216 bytes"), (empty.as_path(), "non-blank lines (it has 0)"), (not_utf8.as_path(), "byte 5 is not valid UTF-8")]
    {
        let args = ["sample".as_ref(), "--checkpoint".as_ref(), model.as_os_str(), "--prompts".as_ref(), file.as_os_str(), "--out".as_ref(), out.as_os_str()];
        let start = std::time::Instant::now();
        refused(&args, &["--prompts", &file.display().to_string(), expected]);
        assert!(start.elapsed().as_secs() < 30, "{}: refused without reading it all", file.display());
    }
}

/// A diffusers folder of a pipeline difforge does not load yet (SD3: `transformer/`, no
/// `unet/`) is named as such, not as "no manifest.json".
#[test]
fn a_pipeline_folder_difforge_does_not_load_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let sd3 = dir.path().join("sd3");
    std::fs::create_dir_all(sd3.join("transformer")).unwrap();
    std::fs::write(sd3.join("model_index.json"), r#"{"_class_name": "StableDiffusion3Pipeline", "_diffusers_version": "0.35.2"}"#).unwrap();
    let out = dir.path().join("x.png");
    for args in [
        vec!["sample".as_ref(), "--checkpoint".as_ref(), sd3.as_os_str(), "--prompt".as_ref(), "a cat".as_ref(), "--out".as_ref(), out.as_os_str()],
        vec![
            "convert".as_ref(),
            "--from".as_ref(),
            sd3.as_os_str(),
            "--to".as_ref(),
            "single-file".as_ref(),
            "--out".as_ref(),
            dir.path().join("x.safetensors").as_os_str(),
        ],
    ] {
        let run = difforge().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success() && err.contains("StableDiffusion3Pipeline is not supported yet"), "{args:?}: {err}");
    }
}
