//! A text-to-image model from scratch, stage by stage on a small synthetic shapes set: `vae
//! train`, then `sd init` (the VAE with a fresh UNet and CLIP text encoder, CLIP's tokenizer
//! written out), then the Stable Diffusion family trains every UNet and text-encoder weight and
//! exports a diffusers folder that `sample` generates from and `data judge` scores from the
//! prompts in the PNGs.

use crate::common::difforge;
use crate::sd_finetune::train_and_check_resume;
use difforge_nn::sd::tokenizer::{ClipTokenizer, EmbeddedPad};
use std::path::Path;

fn run_ok(args: &[&str]) -> String {
    let out = difforge().args(args).output().unwrap();
    assert!(out.status.success(), "difforge {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const VAE_CONFIG: &str = r#"
[data]
source = "folder"
image_size = 32
channels = 3
val_fraction = 0.1
[train]
steps = 4
batch_size = 8
val_every = 4
val_images = 8
checkpoint_every = 4
threads = 1
[vae]
block_out_channels = [8, 16, 16]
norm_num_groups = 8
"#;

/// The text-to-image run on `base`, text encoder training too.
fn t2i_config(data: &Path, base: &Path) -> String {
    let (data, base) = (data.display(), base.display());
    let sections = format!("[data]\nsource = \"folder\"\npath = \"{data}\"\nimage_size = 32\nchannels = 3\nval_fraction = 0.1\n");
    sections + &format!("[model]\nfamily = \"stable-diffusion\"\nbase = \"{base}\"\ntrain_text_encoder = true\n") + T2I_REST
}

const T2I_REST: &str = r#"
[diffusion]
schedule = "scaled_linear"
beta_start = 0.00085
beta_end = 0.012
timesteps = 1000
prediction = "epsilon"
class_dropout = 0.1
[train]
steps = 16
batch_size = 4
lr = 1e-3
warmup_steps = 0
checkpoint_every = 8
log_every = 1
val_every = 8
val_images = 4
sample_every = 0
threads = 1
[sample]
sampler = "ddim"
steps = 3
guidance = 3.0
"#;

#[test]
fn vae_then_sd_init_then_unet_training_gives_a_model_that_samples_and_is_judged() {
    let dir = tempfile::tempdir().unwrap();
    let (shapes, vae_run, base) = (dir.path().join("shapes"), dir.path().join("vae"), dir.path().join("base"));
    run_ok(&["data", "synth", "shapes", "--out", s(&shapes), "--n", "48"]);
    let vae_config = dir.path().join("vae.toml");
    std::fs::write(&vae_config, VAE_CONFIG).unwrap();
    let data = format!("data.path=\"{}\"", shapes.display());
    run_ok(&["vae", "train", "--config", s(&vae_config), "--set", &data, "--out", s(&vae_run)]);

    let vae_folder = vae_run.join("vae");
    let init = ["sd", "init", "--vae", s(&vae_folder), "--out", s(&base), "--image-size", "32"];
    let small = ["--unet-channels", "16,32", "--norm-groups", "8", "--unet-heads", "2", "--text-width", "32", "--seed", "3"];
    run_ok(&[&init[..], &small[..]].concat());
    let vae_weights = "vae/diffusion_pytorch_model.safetensors";
    assert!(std::fs::read(base.join(vae_weights)).unwrap() == std::fs::read(vae_run.join(vae_weights)).unwrap(), "the VAE is the trained one");
    // The tokenizer folder is CLIP's: the same ids as the built-in tokenizer.
    let caption = "a small red circle at the top left on a white background";
    let written = ClipTokenizer::load(base.join("tokenizer")).unwrap().encode(caption).unwrap();
    assert_eq!(written, ClipTokenizer::embedded(EmbeddedPad::EndToken).unwrap().encode(caption).unwrap());
    // Never written over, and sizes that cannot build are refused by flag.
    let again = difforge().args([&init[..], &small[..]].concat()).output().unwrap();
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("--out"));
    let other = dir.path().join("other");
    let bad = difforge().args(["sd", "init", "--vae", s(&vae_folder), "--out", s(&other), "--unet-channels", "20,40"]).output().unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("--unet-channels") && !other.exists());

    // Both networks train, and a run killed after a checkpoint resumes to the same bytes.
    let (t2i, _) = train_and_check_resume(dir.path(), "t2i", &t2i_config(&shapes, &base));
    for (weights, what) in [("unet/diffusion_pytorch_model.safetensors", "UNet"), ("text_encoder/model.safetensors", "text encoder")] {
        let (trained, killed) = (t2i.join("diffusers").join(weights), dir.path().join("t2i-killed/diffusers").join(weights));
        assert!(std::fs::read(&trained).unwrap() != std::fs::read(base.join(weights)).unwrap(), "the {what} did not train");
        assert!(std::fs::read(&trained).unwrap() == std::fs::read(&killed).unwrap(), "the exported {what} differs after the resume");
    }
    let with_lora = dir.path().join("with-lora.toml");
    std::fs::write(&with_lora, t2i_config(&shapes, &base) + "[lora]\nrank = 4\n").unwrap();
    let refused = difforge().args(["train", "--config", s(&with_lora), "--out"]).arg(dir.path().join("refused")).output().unwrap();
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("model.train_text_encoder"));

    let samples = dir.path().join("samples");
    std::fs::create_dir_all(&samples).unwrap();
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, format!("{caption}\na large green square at the center on a black background\n")).unwrap();
    run_ok(&["sample", "--checkpoint", s(&t2i.join("diffusers")), "--prompts", s(&prompts), "--steps", "3", "--out", s(&samples.join("s.png"))]);
    let report = run_ok(&["data", "judge", s(&samples), "--json"]);
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["judged"], 2, "both samples judged against the prompts in their PNGs: {report}");
    assert_eq!(report["report"]["overall"]["images"], 2, "{report}");
}
