//! Stable Diffusion folders as `difforge finetune --from` and `lora merge --base` take them (the
//! tiny SD 1.5 fixture): a LoRA fine-tune straight from the folder with the base's scheduler
//! (its kohya file named by `lora.output_name`, with sd-scripts' metadata), then its file merged for good into a diffusers folder and into a single file, each of which
//! renders what the base with the file renders; what cannot be written is refused before any
//! work, naming the flag.

use super::sd_finetune::{base, write_shapes};
use crate::common::difforge;
use std::path::Path;

fn pixels(path: &Path) -> Vec<u8> {
    image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8().into_raw()
}

fn max_difference(a: &[u8], b: &[u8]) -> u8 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0)
}

/// `difforge sample` of `checkpoint` (with `extra` flags) for a fixed prompt and seed.
fn sample(checkpoint: &Path, extra: &[&str], out: &Path) -> Vec<u8> {
    let args = ["--prompt", "a red square", "--seed", "5", "--steps", "4", "--guidance", "3", "--out"];
    difforge().arg("sample").arg("--checkpoint").arg(checkpoint).args(extra).args(args).arg(out).assert().success();
    pixels(out)
}

#[test]
fn a_folder_fine_tunes_straight_from_finetune_and_its_lora_merges_into_a_folder_and_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shapes");
    write_shapes(&data);
    let run = dir.path().join("run");
    let sets =
        ["train.steps=6", "train.lr=1e-2", "train.threads=1", "train.batch_size=2", "sample.steps=2", "data.val_fraction=0.2", "lora.output_name=shapes-style"];
    let mut cmd = difforge();
    cmd.arg("finetune").arg("--from").arg(base()).arg("--data").arg(&data).arg("--out").arg(&run).arg("--json");
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "finetune failed: {}", String::from_utf8_lossy(&out.stderr));
    // kohya's file under lora.output_name (the webui's <lora:shapes-style:1> tag), with sd-scripts'
    // training metadata.
    let lora = run.join("shapes-style.safetensors");
    assert!(lora.is_file() && run.join("pytorch_lora_weights.safetensors").is_file() && !run.join("lora.safetensors").exists());
    let header = String::from_utf8_lossy(&std::fs::read(&lora).unwrap()[..4096]).into_owned();
    for entry in [r#""ss_base_model_version":"sd_v1""#, r#""ss_output_name":"shapes-style""#, r#""ss_max_train_steps":"6""#, r#""ss_resolution":"(32, 32)""#] {
        assert!(header.contains(entry), "{entry} in {header}");
    }
    // sd-scripts' dataset record: the training images of the "shapes" folder and their caption tags.
    let size = u64::from_le_bytes(std::fs::read(&lora).unwrap()[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&std::fs::read(&lora).unwrap()[8..8 + size]).unwrap();
    let meta = &header["__metadata__"];
    let field = |key: &str| -> serde_json::Value { serde_json::from_str(meta[key].as_str().unwrap_or_else(|| panic!("{key} in {meta}"))).unwrap() };
    let images = field("ss_num_train_images").as_u64().unwrap();
    assert!((12..18).contains(&images), "the training split of 18 images: {meta}");
    assert_eq!(field("ss_dataset_dirs")["shapes"]["img_count"].as_u64(), Some(images), "{meta}");
    let tags = field("ss_tag_frequency")["shapes"].as_object().cloned().unwrap();
    assert!(tags.keys().all(|t| t.starts_with("a ") && (t.ends_with(" square") || t.ends_with(" circle"))), "{tags:?}");
    assert_eq!(tags.values().map(|c| c.as_u64().unwrap()).sum::<u64>(), images, "one tag per caption: {tags:?}");
    let saved: toml::Table = std::fs::read_to_string(run.join("config.toml")).unwrap().parse().unwrap();
    assert_eq!((saved["sample"]["spacing"].as_str(), saved["sample"]["noise"].as_str()), (Some("leading"), Some("torch")), "the base's scheduler");

    let with_file = sample(&base(), &["--lora", lora.to_str().unwrap()], &dir.path().join("with-file.png"));
    let plain = sample(&base(), &[], &dir.path().join("plain.png"));
    assert!(max_difference(&with_file, &plain) > 2, "the LoRA changes the image");

    // Merged into a diffusers folder, and into a single file (read with the base's configs).
    let folder = dir.path().join("merged");
    difforge().args(["lora", "merge", "--base"]).arg(base()).arg("--lora").arg(&lora).arg("--out").arg(&folder).assert().success();
    let merged = sample(&folder, &[], &dir.path().join("merged.png"));
    assert!(max_difference(&merged, &with_file) <= 1, "merged folder: {}", max_difference(&merged, &with_file));
    let file = dir.path().join("merged.safetensors");
    difforge().args(["lora", "merge", "--base"]).arg(base()).arg("--lora").arg(&lora).arg("--out").arg(&file).assert().success();
    let merged = sample(&file, &["--config", base().to_str().unwrap()], &dir.path().join("merged-file.png"));
    assert!(max_difference(&merged, &with_file) <= 1, "merged file: {}", max_difference(&merged, &with_file));

    // Refused before any work: an existing --out, and --half for a folder.
    let refused = |out: &Path, extra: &[&str], flag: &str| {
        let o = difforge().args(["lora", "merge", "--base"]).arg(base()).arg("--lora").arg(&lora).arg("--out").arg(out).args(extra).output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && stderr.contains(flag), "{flag}: {stderr}");
    };
    refused(&file, &[], "--out");
    refused(&dir.path().join("half"), &["--half"], "--half");
    assert!(!dir.path().join("half").exists());
}
