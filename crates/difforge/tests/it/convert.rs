//! `difforge convert` between the tiny diffusers folders and their single files
//! (tools/make_sd_fixtures.py): round trips that keep every tensor, an output that is
//! complete or absent, and errors that name the flag, the file and the tensor.

use crate::common::difforge;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../difforge-nn/tests/fixtures/sd").join(name)
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

fn convert(args: &[&std::ffi::OsStr]) -> std::process::Output {
    difforge().arg("convert").args(args).output().unwrap()
}

#[test]
fn a_single_file_converts_to_diffusers_and_back_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["tiny-sd15", "tiny-sdxl"] {
        let single = fixture(&format!("{name}.safetensors"));
        let folder = dir.path().join(name);
        let out = convert(&[
            "--from".as_ref(),
            single.as_ref(),
            "--config".as_ref(),
            fixture(name).as_ref(),
            "--to".as_ref(),
            "diffusers".as_ref(),
            "--out".as_ref(),
            folder.as_ref(),
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("a diffusers folder"));
        for part in [
            "model_index.json",
            "unet/config.json",
            "vae/diffusion_pytorch_model.safetensors",
            "text_encoder/model.safetensors",
            "scheduler/scheduler_config.json",
        ] {
            assert!(folder.join(part).is_file(), "{name}: {part}");
        }
        let unet = tensors(&folder.join("unet/diffusion_pytorch_model.safetensors"));
        let want = tensors(&fixture(name).join("unet/diffusion_pytorch_model.safetensors"));
        assert!(unet.len() == want.len() && unet.iter().all(|(k, t)| t.equal(&want[k])), "{name}: the UNet's tensors");

        let back = dir.path().join(format!("{name}.safetensors"));
        let out = convert(&["--from".as_ref(), folder.as_ref(), "--to".as_ref(), "single-file".as_ref(), "--out".as_ref(), back.as_ref()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let (got, want) = (tensors(&back), tensors(&single));
        let mut keys: Vec<&String> = got.keys().collect();
        keys.sort();
        let mut want_keys: Vec<&String> = want.keys().collect();
        want_keys.sort();
        assert_eq!(keys, want_keys, "{name}: single -> diffusers -> single keeps the keys");
        assert!(got.iter().all(|(k, t)| t.equal(&want[k])), "{name}: and the values");
    }
}

#[test]
fn a_ckpt_converts_to_a_half_precision_single_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("half.safetensors");
    let ckpt = fixture("tiny-sd15.ckpt");
    let run = convert(&[
        "--from".as_ref(),
        ckpt.as_ref(),
        "--config".as_ref(),
        fixture("tiny-sd15").as_ref(),
        "--to".as_ref(),
        "single-file".as_ref(),
        "--half".as_ref(),
        "--out".as_ref(),
        out.as_ref(),
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let (half, full) = (tensors(&out), tensors(&fixture("tiny-sd15.safetensors")));
    assert_eq!(half.len(), full.len(), "the schedule buffers, EMA counters and position_ids of the .ckpt are dropped");
    assert!(half.iter().all(|(k, t)| t.kind() == Kind::Half && t.equal(&full[k].to_kind(Kind::Half))));
}

#[test]
fn convert_errors_name_the_flag_file_and_tensor_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let existing = dir.path().join("there.safetensors");
    std::fs::write(&existing, b"keep me").unwrap();
    let sd15 = fixture("tiny-sd15.safetensors");
    let config = fixture("tiny-sd15");
    let new = dir.path().join("new.safetensors");

    let mut broken: Vec<(String, Tensor)> = Tensor::read_safetensors(&sd15).unwrap();
    let gone = "cond_stage_model.transformer.text_model.final_layer_norm.weight";
    broken.retain(|(k, _)| k != gone);
    let broken_file = dir.path().join("broken.safetensors");
    Tensor::write_safetensors(&broken, &broken_file).unwrap();

    let cases: Vec<(Vec<&std::ffi::OsStr>, i32, Vec<String>)> = vec![
        (
            vec![
                "--from".as_ref(),
                sd15.as_ref(),
                "--config".as_ref(),
                config.as_ref(),
                "--to".as_ref(),
                "single-file".as_ref(),
                "--out".as_ref(),
                existing.as_ref(),
            ],
            2,
            vec!["--out".into()],
        ),
        (vec!["--from".as_ref(), sd15.as_ref(), "--to".as_ref(), "single-file".as_ref(), "--out".as_ref(), new.as_ref()], 2, vec!["--config".into()]),
        (
            vec!["--from".as_ref(), config.as_ref(), "--to".as_ref(), "diffusers".as_ref(), "--half".as_ref(), "--out".as_ref(), new.as_ref()],
            2,
            vec!["--half".into()],
        ),
        (
            vec![
                "--from".as_ref(),
                broken_file.as_ref(),
                "--config".as_ref(),
                config.as_ref(),
                "--to".as_ref(),
                "diffusers".as_ref(),
                "--out".as_ref(),
                new.as_ref(),
            ],
            1,
            vec![broken_file.display().to_string(), format!("`{gone}`"), "missing".into()],
        ),
    ];
    for (args, code, wants) in cases {
        let out = convert(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        for want in wants {
            assert!(stderr.contains(&want), "{want:?} in: {stderr}");
        }
    }
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
    let mut left: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["broken.safetensors", "there.safetensors"], "nothing written, no temporary left");
}
