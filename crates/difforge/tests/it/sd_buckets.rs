//! Aspect-ratio buckets in Stable Diffusion fine-tuning (the tiny SD 1.5 and SDXL fixtures):
//! captioned images of several shapes train in one-bucket batches, the bucket report lands in the
//! run folder with a too-small image named and its reason, a run killed and resumed ends
//! byte-identical to an uninterrupted one, SDXL trains with each image's own size and crop as
//! its size conditioning, and buckets on a pixel model are refused by key.

use super::sd_finetune::{base, config, train, train_and_check_resume, write_config};
use crate::common::difforge;
use std::path::Path;

/// Coloured shapes on canvases of three shapes (wide, tall, square), captioned "a red square"
/// and so on, plus one 12x12 image that `no_upscale` cannot place.
fn write_shaped(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let canvases = [(64u32, 32u32), (32, 64), (40, 40)];
    let colours = [("red", [220u8, 30, 30]), ("blue", [30, 60, 220]), ("green", [30, 180, 60])];
    let mut i = 0;
    for (w, h) in canvases {
        for (name, rgb) in colours {
            for kind in ["square", "circle"] {
                let (cx, cy, r) = (f64::from(w) / 2.0, f64::from(h) / 2.0, f64::from(w.min(h)) / 4.0);
                let img = image::RgbImage::from_fn(w, h, |x, y| {
                    let (dx, dy) = (f64::from(x) - cx, f64::from(y) - cy);
                    let inside = if kind == "square" { dx.abs() < r && dy.abs() < r } else { dx * dx + dy * dy < r * r };
                    image::Rgb(if inside { rgb } else { [240, 240, 240] })
                });
                img.save(dir.join(format!("{i:03}.png"))).unwrap();
                std::fs::write(dir.join(format!("{i:03}.txt")), format!("a {name} {kind}")).unwrap();
                i += 1;
            }
        }
    }
    image::RgbImage::from_pixel(12, 12, image::Rgb([0, 0, 0])).save(dir.join("tiny.png")).unwrap();
    std::fs::write(dir.join("tiny.txt"), "a black square").unwrap();
}

const BUCKETS: &str = "[data.buckets]\nresolution = 32\nmin_size = 16\nmax_size = 64\nstep = 8\nno_upscale = true\n[data.augment]\nhflip = 0.5\n";

/// The fine-tune config of sd_finetune.rs with random crops, flips and buckets.
fn bucketed(data: &Path, steps: u64, lora: bool) -> String {
    config(data, steps, lora).replace("val_fraction = 0.2\n", &format!("val_fraction = 0.2\ncrop = \"random\"\n{BUCKETS}"))
}

#[test]
fn sd_lora_trains_on_buckets_reports_them_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shaped");
    write_shaped(&data);
    let (run, _) = train_and_check_resume(dir.path(), "buckets", &bucketed(&data, 16, true));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("buckets.json")).unwrap()).unwrap();
    assert_eq!((report["images"].as_u64(), report["placed"].as_u64()), (Some(19), Some(18)), "{report}");
    assert_eq!(report["dropped"][0]["id"], "tiny.png");
    assert!(report["dropped"][0]["message"].as_str().unwrap().contains("no_upscale"), "{report}");
    let buckets: Vec<String> = report["buckets"].as_array().unwrap().iter().map(|b| format!("{}x{}", b["width"], b["height"])).collect();
    // 2:1 canvases in 40x24 (the nearest shape of at most 32² pixels, never enlarged), 1:2 in
    // its transpose, squares in 32x32.
    assert_eq!(buckets, ["24x40", "32x32", "40x24"]);
    // Every training image is in an epoch's batches (the validation split is not).
    let batching = &report["batching"];
    assert_eq!(batching["images_left_out_per_epoch"], 0);
    assert!((13..=15).contains(&batching["images_per_epoch"].as_u64().unwrap()), "{report}");
}

#[test]
fn sdxl_trains_on_buckets_with_each_images_size_and_crop() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shaped");
    write_shaped(&data);
    let sdxl = base().with_file_name("tiny-sdxl");
    let text = bucketed(&data, 8, true).replace(&base().display().to_string(), &sdxl.display().to_string());
    let summary = train(&write_config(dir.path(), "sdxl.toml", &text), &dir.path().join("sdxl"));
    assert_eq!(summary["final_step"], 8);
    assert!(summary["final_validation"]["val_loss"].as_f64().is_some_and(f64::is_finite), "{summary}");
}

#[test]
fn buckets_on_a_pixel_model_are_refused_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shaped");
    write_shaped(&data);
    let text = format!("[data]\nsource = \"folder\"\npath = \"{}\"\nchannels = 3\nimage_size = 32\n{BUCKETS}[train]\nsteps = 2\n", data.display());
    let cfg = write_config(dir.path(), "pixel.toml", &text);
    let out = difforge().arg("train").arg("--config").arg(&cfg).arg("--out").arg(dir.path().join("run")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("data.buckets") && stderr.contains("stable-diffusion"), "{stderr}");
}
