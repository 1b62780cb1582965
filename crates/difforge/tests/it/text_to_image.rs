//! `difforge sample` on a diffusers Stable Diffusion folder (the tiny SD 1.x and SDXL fixtures of
//! tools/make_sd_fixtures.py): images with their prompt and settings in PNG text chunks, the
//! same image for the same seed, the torch noise that matches diffusers' image, and errors that
//! name the flag.

use crate::common::difforge;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../difforge-nn/tests/fixtures/sd").join(name)
}

/// The iTXt chunks of a PNG as (keyword, text).
fn text_chunks(path: &Path) -> Vec<(String, String)> {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let reader = decoder.read_info().unwrap();
    reader.info().utf8_text.iter().map(|c| (c.keyword.clone(), c.get_text().unwrap())).collect()
}

#[test]
fn an_sd15_folder_generates_from_a_prompt_with_its_settings_in_the_png() {
    let dir = tempfile::tempdir().unwrap();
    let run = |out: &Path| {
        let args = ["--prompt", "a red fox in the snow", "--negative-prompt", "blurry", "--steps", "6", "--seed", "42", "--noise", "torch"];
        difforge().arg("sample").arg("--checkpoint").arg(fixture("tiny-sd15")).args(args).arg("--out").arg(out).assert().success();
    };
    let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
    run(&a);
    run(&b);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "same seed, same image");
    let image = image::open(&a).unwrap();
    assert_eq!((image.width(), image.height()), (32, 32), "the model's default size");
    let chunks = text_chunks(&a);
    let parameters = &chunks.iter().find(|(k, _)| k == "parameters").expect("a parameters chunk").1;
    assert!(
        parameters.starts_with("a red fox in the snow\nNegative prompt: blurry\nSteps: 6, Sampler: ddim, CFG scale: 7.5, Seed: 42, Size: 32x32"),
        "{parameters}"
    );
    let json: serde_json::Value = serde_json::from_str(&chunks.iter().find(|(k, _)| k == "difforge").unwrap().1).unwrap();
    assert_eq!((json["seed"].as_u64(), json["noise"].as_str()), (Some(42), Some("torch")));
}

#[test]
fn several_prompts_and_images_are_numbered_beside_out_with_one_seed_each_and_drawn_on_a_sheet_at_out() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "a cat\n\n  a dog on a skateboard \n").unwrap();
    let out = dir.path().join("pets.png");
    let output = difforge()
        .args(["sample", "--n", "2", "--steps", "3", "--size", "32x48", "--seed", "7", "--json", "--prompts"])
        .arg(&prompts)
        .arg("--checkpoint")
        .arg(fixture("tiny-sdxl"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["images"], 4);
    for (k, (prompt, seed)) in [("a cat", 7), ("a cat", 8), ("a dog on a skateboard", 9), ("a dog on a skateboard", 10)].iter().enumerate() {
        let path = dir.path().join(format!("pets-{k:04}.png"));
        let image = image::open(&path).unwrap();
        assert_eq!((image.width(), image.height()), (32, 48));
        let parameters = text_chunks(&path).into_iter().find(|(key, _)| key == "parameters").unwrap().1;
        assert!(parameters.starts_with(&format!("{prompt}\n")) && parameters.contains(&format!("Seed: {seed},")), "{parameters}");
    }
    // --out is the sheet of all four, a row per prompt, saying what each tile is.
    let sheet = image::open(&out).unwrap();
    assert_eq!((sheet.width(), sheet.height()), (2 * 34 + 2, 2 * 50 + 2));
    assert_eq!(report["sheet"].as_str(), out.to_str());
    let meta: serde_json::Value = serde_json::from_str(&text_chunks(&out).into_iter().find(|(key, _)| key == "difforge").unwrap().1).unwrap();
    assert_eq!(
        (meta["images"][2]["prompt"].as_str(), meta["images"][2]["seed"].as_u64(), meta["columns"].as_u64()),
        (Some("a dog on a skateboard"), Some(9), Some(2)),
        "{meta}"
    );
}

#[test]
fn text_to_image_errors_name_the_flag_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.png");
    let cases: [(&[&str], &str); 6] = [
        (&["--prompt", "x", "--lora", "nope.safetensors:0.5"], "--lora nope.safetensors:0.5"),
        (&["--prompt", "x", "--lora", "nope.safetensors:strong"], "--lora nope.safetensors:strong"),
        (&["--prompt", "x", "--size", "30x32"], "--size 30x32"),
        (&["--prompt", "x", "--size", "big"], "--size big"),
        (&[], "--prompt (missing)"),
        (&["--prompt", "x", "--class", "2"], "--class"),
    ];
    for (args, expected) in cases {
        let output = difforge().arg("sample").arg("--checkpoint").arg(fixture("tiny-sd15")).args(args).arg("--out").arg(&out).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!out.exists());
    }
}

#[test]
fn a_single_file_generates_with_its_config_folder_as_the_folder_does() {
    let dir = tempfile::tempdir().unwrap();
    let file = fixture("tiny-sd15.safetensors");
    let (from_file, from_folder) = (dir.path().join("file.png"), dir.path().join("folder.png"));
    let args = ["--prompt", "a red fox", "--steps", "4", "--seed", "3"];
    difforge()
        .arg("sample")
        .arg("--checkpoint")
        .arg(&file)
        .arg("--config")
        .arg(fixture("tiny-sd15"))
        .args(args)
        .arg("--out")
        .arg(&from_file)
        .assert()
        .success();
    difforge().arg("sample").arg("--checkpoint").arg(fixture("tiny-sd15")).args(args).arg("--out").arg(&from_folder).assert().success();
    let pixels = |p: &Path| image::open(p).unwrap().to_rgb8().into_raw();
    assert_eq!(pixels(&from_file), pixels(&from_folder), "the single file and its folder are the same model");
}

#[test]
fn a_lora_file_at_a_scale_changes_the_image_and_is_recorded_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let lora = Path::new(env!("CARGO_MANIFEST_DIR")).join("../difforge-model/tests/fixtures/sd-lora/kohya.safetensors");
    let args = ["--prompt", "a red fox", "--steps", "3", "--seed", "5"];
    let (plain, with_lora) = (dir.path().join("plain.png"), dir.path().join("lora.png"));
    difforge().arg("sample").arg("--checkpoint").arg(fixture("tiny-sd15")).args(args).arg("--out").arg(&plain).assert().success();
    let output = difforge()
        .arg("sample")
        .arg("--checkpoint")
        .arg(fixture("tiny-sd15"))
        .args(args)
        .arg("--lora")
        .arg(format!("{}:0.5", lora.display()))
        .arg("--json")
        .arg("--out")
        .arg(&with_lora)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let merged = &report["loras"][0];
    assert_eq!((merged["format"].as_str(), merged["multiplier"].as_f64()), (Some("kohya"), Some(0.5)), "{report}");
    assert_eq!((merged["patched"]["unet"].as_u64(), merged["patched"]["text_encoder"].as_u64()), (Some(33), Some(12)), "{report}");
    let pixels = |p: &Path| image::open(p).unwrap().to_rgb8().into_raw();
    assert_ne!(pixels(&plain), pixels(&with_lora), "the LoRA changes the image");
    let chunks = text_chunks(&with_lora);
    let parameters = &chunks.iter().find(|(k, _)| k == "parameters").unwrap().1;
    assert!(parameters.starts_with("a red fox <lora:kohya:0.5>\nNegative prompt: \n"), "{parameters}");
    let json: serde_json::Value = serde_json::from_str(&chunks.iter().find(|(k, _)| k == "difforge").unwrap().1).unwrap();
    assert_eq!((json["prompt"].as_str(), json["loras"][0]["name"].as_str(), json["loras"][0]["scale"].as_f64()), (Some("a red fox"), Some("kohya"), Some(0.5)));
}

/// A diffusers folder whose text encoders transformers 5 saved (tools/make_transformers5_fixtures.py:
/// `CLIPTextModel` without the `text_model.` prefix) generates the transformers-4 folder's image,
/// which difforge-model's pipeline tests hold to diffusers'.
#[test]
fn folders_saved_by_transformers_5_generate_the_transformers_4_folders_image() {
    let dir = tempfile::tempdir().unwrap();
    for (model, encoders) in [("tiny-sd15", &["text_encoder"][..]), ("tiny-sdxl", &["text_encoder", "text_encoder_2"][..])] {
        let tf5 = dir.path().join(model);
        crate::sd_finetune::copy_dir(&fixture(model), &tf5);
        for encoder in encoders {
            std::fs::remove_dir_all(tf5.join(encoder)).unwrap();
            crate::sd_finetune::copy_dir(&fixture("transformers5").join(model).join(encoder), &tf5.join(encoder));
        }
        let render = |folder: &Path, name: &str| {
            let out = dir.path().join(format!("{model}-{name}.png"));
            let args = ["--prompt", "a red fox in the snow", "--seed", "7", "--steps", "3", "--out"];
            difforge().arg("sample").arg("--checkpoint").arg(folder).args(args).arg(&out).assert().success();
            image::open(&out).unwrap().to_rgb8().into_raw()
        };
        assert!(render(&tf5, "tf5") == render(&fixture(model), "tf4"), "{model}: a transformers-5 folder gives the transformers-4 folder's image");
    }
}
