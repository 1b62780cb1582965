//! Previews of Stable Diffusion runs (the tiny SD 1.5 fixture). A run without a schedule or
//! sampler in its config takes the base's, so its previews, `difforge sample` and `serve` of the
//! run render what the base with the run's exported LoRA file renders (as diffusers does).
//! Preview prompts from a file in kohya's format: each line with its own seed, size, steps,
//! guidance and negative prompt, one grid per size; previews leave the training's weights
//! byte-identical; a bad line is refused before training, named by file and line.

use super::sd_finetune::{base, config, train, write_config, write_shapes};
use crate::common::difforge;
use crate::serve::{call, start, KEY};
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

/// Max |a - b| over the bytes of two RGB images of the same size.
fn max_difference(a: &image::RgbImage, b: &image::RgbImage) -> u8 {
    assert_eq!(a.dimensions(), b.dimensions());
    a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0)
}

fn rgb(path: &Path) -> image::RgbImage {
    image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8()
}

/// Tile `i` of a preview grid of 32x32 images in `columns` columns (2-pixel borders).
fn tile(grid: &image::RgbImage, columns: u32, i: u32) -> image::RgbImage {
    let (x, y) = ((i % columns) * 34 + 2, (i / columns) * 34 + 2);
    image::imageops::crop_imm(grid, x, y, 32, 32).to_image()
}

#[test]
fn a_lora_runs_previews_samples_and_server_render_what_its_file_renders_on_the_base() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shapes");
    write_shapes(&data);
    // No schedule and no sampler in the config: both come from the base's scheduler.
    let text = config(&data, 8, true).replace("schedule = \"scaled_linear\"\nbeta_start = 0.00085\nbeta_end = 0.012\nprediction = \"epsilon\"\n", "");
    assert!(!text.contains("beta_end"));
    let run = dir.path().join("run");
    train(&write_config(dir.path(), "run.toml", &text), &run);
    let saved: toml::Table = std::fs::read_to_string(run.join("config.toml")).unwrap().parse().unwrap();
    let (diffusion, sample) = (&saved["diffusion"], &saved["sample"]);
    assert_eq!((diffusion["schedule"].as_str(), diffusion["beta_end"].as_float()), (Some("scaled_linear"), Some(0.012)), "{diffusion}");
    // tools/make_sd_fixtures.py: SD's DDIM, leading spacing with offset 1, final alpha of t = 0.
    let base_sampling = (sample["sampler"].as_str(), sample["spacing"].as_str(), sample["steps_offset"].as_integer(), sample["set_alpha_to_one"].as_bool());
    assert_eq!(base_sampling, (Some("ddim"), Some("leading"), Some(1), Some(false)), "{sample}");
    assert_eq!((sample["noise"].as_str(), sample["steps"].as_integer(), sample["guidance"].as_float()), (Some("torch"), Some(4), Some(3.0)), "{sample}");

    // The blue circle's row of the last preview grid (2 per prompt: seeds first + 2, first + 3).
    let first = difforge_core::derive_seed(3, difforge_core::Stream::Sample, 0) >> 16;
    let grid_file = run.join("samples/step-00000008.png");
    let grid = rgb(&grid_file);
    // The grid says what each tile is.
    let png = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&grid_file).unwrap())).read_info().unwrap();
    let chunk = png.info().utf8_text.iter().find(|c| c.keyword == "difforge").map(|c| c.get_text().unwrap()).expect("a difforge text chunk");
    let meta: serde_json::Value = serde_json::from_str(&chunk).unwrap();
    assert_eq!(
        (meta["images"][2]["prompt"].as_str(), meta["images"][2]["seed"].as_u64(), meta["noise"].as_str()),
        (Some("a blue circle"), Some(first + 2), Some("torch")),
        "{meta}"
    );
    let previews = [tile(&grid, 2, 2), tile(&grid, 2, 3)];
    let seed = (first + 2).to_string();
    let prompt = ["--prompt", "a blue circle", "--seed", seed.as_str()];

    // `difforge sample` of the run.
    let each = dir.path().join("each");
    difforge()
        .args(["sample", "--checkpoint"])
        .arg(&run)
        .args(prompt)
        .args(["--n", "2", "--out"])
        .arg(dir.path().join("run.png"))
        .arg("--out-dir")
        .arg(&each)
        .assert()
        .success();
    // Each file carries its own prompt and seed (what `data judge` reads back).
    let first = each.join("sample-00000.png");
    assert_eq!(difforge_model::images::generated_prompt(&first).as_deref(), Some("a blue circle"));
    for (k, preview) in previews.iter().enumerate() {
        let sampled = rgb(&each.join(format!("sample-{k:05}.png")));
        assert!(max_difference(&sampled, preview) <= 2, "sample --checkpoint RUN, image {k}: {} from the preview", max_difference(&sampled, preview));
    }
    // The base with the exported file in either layout, as diffusers renders it (the pipeline
    // and LoRA parity tests of difforge-model hold these to diffusers' outputs).
    for file in ["lora.safetensors", "pytorch_lora_weights.safetensors"] {
        let out = dir.path().join(format!("{file}.png"));
        let lora = run.join(file);
        difforge()
            .args(["sample", "--checkpoint"])
            .arg(base())
            .arg("--lora")
            .arg(&lora)
            .args(prompt)
            .args(["--n", "2", "--steps", "4", "--guidance", "3"])
            .arg("--out")
            .arg(&out)
            .assert()
            .success();
        for (k, preview) in previews.iter().enumerate() {
            let sampled = rgb(&dir.path().join(format!("{file}-{k:04}.png")));
            assert!(max_difference(&sampled, preview) <= 2, "base + {file}, image {k}: {} from the preview", max_difference(&sampled, preview));
        }
    }
    // The server of the run.
    let (serve_config, keys) = (dir.path().join("serve.toml"), dir.path().join("keys.txt"));
    std::fs::write(&serve_config, "max_batch = 2\nmax_wait_ms = 20\n").unwrap();
    std::fs::write(&keys, format!("{KEY}\n")).unwrap();
    let server = start(&run, &serve_config, &keys);
    let body = format!(r#"{{"prompt": "a blue circle", "seed": {seed}}}"#);
    let served = call("POST", &format!("{}/v1/generate", server.base), Some(KEY), Some(&body));
    assert_eq!(served.status, 200, "{}", String::from_utf8_lossy(&served.body));
    let served = image::load_from_memory(&served.body).unwrap().to_rgb8();
    assert!(max_difference(&served, &previews[0]) <= 2, "serve: {} from the preview", max_difference(&served, &previews[0]));
}

/// A LoRA file a difforge run trained and exported (tools/make_sd_lora_run_fixture.py, kohya's
/// layout) on the tiny SD 1.5 base renders in difforge what diffusers 0.35.2 renders with
/// `load_lora_weights` for the same prompt and seed (the fixture's reference image), to 2/255. With
/// the test above (a run's previews, `sample` and `serve` give the base-plus-file image), a run's
/// previews are diffusers' image of its exported file.
#[test]
fn a_trained_loras_file_renders_in_difforge_as_in_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd-lora-run");
    let refs: std::collections::HashMap<String, tch::Tensor> =
        tch::Tensor::read_safetensors(fixtures.join("reference.safetensors")).unwrap().into_iter().collect();
    let to_bytes = |t: &tch::Tensor| -> Vec<u8> {
        let hwc = (t.get(0).permute([1, 2, 0]) * 255.0).round().clamp(0.0, 255.0).to_kind(tch::Kind::Uint8).contiguous();
        Vec::<u8>::try_from(hwc.view([-1])).unwrap()
    };
    let args = ["--prompt", "a small blue circle at the center on a white background", "--seed", "42", "--steps", "4", "--guidance", "3"];
    for (lora, key) in [(Some(fixtures.join("lora.safetensors")), "image"), (None, "base_image")] {
        let out = dir.path().join(format!("{key}.png"));
        let mut cmd = difforge();
        cmd.args(["sample", "--checkpoint"]).arg(base()).args(args).arg("--out").arg(&out);
        if let Some(file) = &lora {
            cmd.arg("--lora").arg(file);
        }
        cmd.assert().success();
        let ours = rgb(&out).into_raw();
        let theirs = to_bytes(&refs[key]);
        let worst = ours.iter().zip(&theirs).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
        assert!(worst <= 2, "{key}: {worst}/255 from diffusers");
    }
    assert!(to_bytes(&refs["image"]) != to_bytes(&refs["base_image"]), "the LoRA changes diffusers' image");
}
