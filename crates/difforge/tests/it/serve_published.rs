//! `difforge serve` on a published diffusers Stable Diffusion folder, as it is (no training run):
//! it serves prompts with the folder's own scheduler and diffusers' defaults, and gives the
//! image `difforge sample` gives for the same prompt, seed and steps, pixel for pixel; with
//! `--lora FILE` the image `difforge sample --lora FILE` gives.

use crate::common::difforge;
use crate::serve::{call, start, start_with, KEY};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../difforge-nn/tests/fixtures/sd").join(name)
}

fn pixels(png: &[u8]) -> (u32, u32, Vec<u8>) {
    let image = image::load_from_memory(png).unwrap().to_rgb8();
    (image.width(), image.height(), image.into_raw())
}

#[test]
fn a_published_folder_is_served_as_difforge_sample_generates_it() {
    let dir = tempfile::tempdir().unwrap();
    let folder = fixture("tiny-sd15");
    let (config, keys) = (dir.path().join("serve.toml"), dir.path().join("keys.txt"));
    std::fs::write(&config, "max_batch = 4\nmax_wait_ms = 20\n").unwrap();
    std::fs::write(&keys, format!("{KEY}\n")).unwrap();
    let server = start(&folder, &config, &keys);

    let models = call("GET", &format!("{}/v1/models", server.base), Some(KEY), None).json();
    let model = &models["models"][0];
    assert_eq!((model["conditioning"].as_str(), model["checkpoint"].as_str(), model["step"].as_u64()), (Some("text"), Some("tiny-sd15"), Some(0)), "{model}");
    // A user key learns no path of the server's disk, the base model's included (its name only).
    let parent = folder.parent().unwrap().display().to_string();
    assert!(!models.to_string().contains(&parent), "{parent} shown to a user key: {models}");
    assert_eq!(model["config"]["model"]["base"].as_str(), Some("tiny-sd15"), "{model}");
    // The folder's scheduler (SD's DDIM, leading spacing with offset 1) and diffusers' defaults.
    let defaults = &model["defaults"];
    assert_eq!(
        (defaults["sampler"].as_str(), defaults["spacing"].as_str(), defaults["steps"].as_u64(), defaults["guidance"].as_f64()),
        (Some("ddim"), Some("leading"), Some(50), Some(7.5)),
        "{defaults}"
    );

    let body = r#"{"prompt": "a red fox in the snow", "negative_prompt": "blurry", "seed": 11, "steps": 4}"#;
    let served = call("POST", &format!("{}/v1/generate", server.base), Some(KEY), Some(body));
    assert_eq!(served.status, 200, "{}", String::from_utf8_lossy(&served.body));

    let sampled_png = dir.path().join("sampled.png");
    let args = ["--prompt", "a red fox in the snow", "--negative-prompt", "blurry", "--seed", "11", "--steps", "4", "--out"];
    difforge().arg("sample").arg("--checkpoint").arg(&folder).args(args).arg(&sampled_png).assert().success();
    let (served, sampled) = (pixels(&served.body), pixels(&std::fs::read(&sampled_png).unwrap()));
    assert_eq!((served.0, served.1), (32, 32), "the folder's own size");
    assert_close(&served, &sampled);

    // Another size, in steps of the VAE's scale times the UNet's downsamplings.
    assert_eq!(model["size_multiple"].as_i64(), Some(4), "{model}");
    let body = r#"{"prompt": "a red fox in the snow", "seed": 3, "steps": 3, "width": 48, "height": 24}"#;
    let served = call("POST", &format!("{}/v1/generate", server.base), Some(KEY), Some(body));
    assert_eq!(served.status, 200, "{}", String::from_utf8_lossy(&served.body));
    let args = ["--prompt", "a red fox in the snow", "--seed", "3", "--steps", "3", "--size", "48x24", "--out"];
    difforge().arg("sample").arg("--checkpoint").arg(&folder).args(args).arg(&sampled_png).assert().success();
    let (served, sampled) = (pixels(&served.body), pixels(&std::fs::read(&sampled_png).unwrap()));
    assert_eq!((served.0, served.1), (48, 24));
    assert_close(&served, &sampled);
    let refused = call("POST", &format!("{}/v1/generate", server.base), Some(KEY), Some(r#"{"prompt": "x", "width": 50}"#));
    assert_eq!((refused.status, refused.json()["error"]["field"].as_str()), (400, Some("width")));
}

/// The same image to within an 8-bit level at a few values.
fn assert_close(served: &(u32, u32, Vec<u8>), sampled: &(u32, u32, Vec<u8>)) {
    assert_eq!((served.0, served.1), (sampled.0, sampled.1));
    // The two batch their guided predictions differently (the server pads to its batch size),
    // which moves the last float bits: an 8-bit level here and there at most.
    let diffs: Vec<u8> = served.2.iter().zip(&sampled.2).map(|(a, b)| a.abs_diff(*b)).collect();
    let changed = diffs.iter().filter(|&&d| d > 0).count();
    eprintln!("served vs sampled: max {:?}, {changed} of {} values differ", diffs.iter().max(), diffs.len());
    assert!(diffs.iter().all(|&d| d <= 1) && changed * 50 < diffs.len(), "the served image is difforge sample's");
}

#[test]
fn a_single_file_of_an_unpublished_architecture_is_refused_with_the_convert_command() {
    // The tiny file's keys show SD 1.x, whose published architecture it does not have.
    let out = difforge()
        .args(["serve", "--bind", "127.0.0.1:0", "--device", "cpu", "--no-auth", "--checkpoint"])
        .arg(fixture("tiny-sd15.safetensors"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tiny-sd15.safetensors") && stderr.contains("difforge convert --from"), "{stderr}");
}

#[test]
fn a_missing_lora_file_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let lora = dir.path().join("style.safetensors");
    let out = difforge()
        .args(["serve", "--bind", "127.0.0.1:0", "--device", "cpu", "--no-auth", "--checkpoint"])
        .arg(fixture("tiny-sd15"))
        .arg("--lora")
        .arg(&lora)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--lora") && stderr.contains("style.safetensors") && stderr.contains("No such file"), "{stderr}");
}

#[test]
fn a_published_folder_is_served_with_a_lora_file_as_difforge_sample_applies_it() {
    let dir = tempfile::tempdir().unwrap();
    let folder = fixture("tiny-sd15");
    // tools/make_sd_lora_fixtures.py: a random rank-4 LoRA (UNet and text encoder) in kohya's layout.
    let lora = Path::new(env!("CARGO_MANIFEST_DIR")).join("../difforge-model/tests/fixtures/sd-lora/kohya.safetensors");
    let (config, keys) = (dir.path().join("serve.toml"), dir.path().join("keys.txt"));
    std::fs::write(&config, "max_batch = 1\nmax_wait_ms = 20\n").unwrap();
    std::fs::write(&keys, format!("{KEY}\n")).unwrap();
    let server = start_with(&folder, &config, &keys, &["--lora".as_ref(), lora.as_os_str(), "--lora-scale".as_ref(), "0.8".as_ref()]);
    let models = call("GET", &format!("{}/v1/models", server.base), Some(KEY), None).json();
    assert_eq!(models["models"][0]["adapter"][0].as_str(), Some("kohya.safetensors"), "{models}");
    let body = r#"{"prompt": "a red fox in the snow", "seed": 11, "steps": 4}"#;
    let served = call("POST", &format!("{}/v1/generate", server.base), Some(KEY), Some(body));
    assert_eq!(served.status, 200, "{}", String::from_utf8_lossy(&served.body));

    let (with_lora, plain) = (dir.path().join("with.png"), dir.path().join("plain.png"));
    let args = ["--prompt", "a red fox in the snow", "--seed", "11", "--steps", "4", "--out"];
    let lora_arg = format!("{}:0.8", lora.display());
    difforge().arg("sample").arg("--checkpoint").arg(&folder).args(["--lora", lora_arg.as_str()]).args(args).arg(&with_lora).assert().success();
    difforge().arg("sample").arg("--checkpoint").arg(&folder).args(args).arg(&plain).assert().success();
    let served = pixels(&served.body);
    assert_close(&served, &pixels(&std::fs::read(&with_lora).unwrap()));
    assert!(served != pixels(&std::fs::read(&plain).unwrap()), "the LoRA changes the image");
}
