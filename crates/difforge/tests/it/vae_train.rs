//! `difforge vae train`: an AutoencoderKL trained from scratch on the digits learns (validation
//! PSNR rises), exports a diffusers folder that difforge's own SD loader reads back with the
//! scaling factor it measured, resumes bit-identically after SIGKILL, and refuses bad configs by
//! key.

use crate::common::{difforge, kill_mid_run};
use difforge_nn::sd::autoencoder_kl::AutoencoderKl;
use std::path::{Path, PathBuf};
use tch::Tensor;

const CONFIG: &str = r#"
seed = 5
[data]
source = "digits"
image_size = 16
val_fraction = 0.05
[train]
steps = 40
batch_size = 8
lr = 2e-3
warmup_steps = 0
lr_schedule = "constant"
val_every = 10
val_images = 32
checkpoint_every = 10
log_every = 1
threads = 1
[vae]
block_out_channels = [8, 16, 16]
norm_num_groups = 8
"#;

fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("vae.toml");
    std::fs::write(&path, format!("{CONFIG}{extra}")).unwrap();
    path
}

fn vae_train(config: &Path, run: &Path) -> serde_json::Value {
    let out = difforge().args(["vae", "train", "--config"]).arg(config).arg("--out").arg(run).arg("--json").output().unwrap();
    assert!(out.status.success(), "vae train failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("summary JSON")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn vae_training_learns_and_exports_a_diffusers_vae_with_its_scaling_factor() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let summary = vae_train(&write_config(dir.path(), ""), &run);
    assert_eq!(summary["final_step"], 40);
    let validations: Vec<serde_json::Value> =
        std::fs::read_to_string(run.join("validation.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(validations.len(), 4, "validation every 10 steps");
    let (first, last) = (validations[0]["psnr"].as_f64().unwrap(), summary["validation"]["psnr"].as_f64().unwrap());
    assert!(last > first + 1.0, "PSNR did not rise: {first:.2} dB at step 10, {last:.2} dB at the end");

    // The exported folder is what difforge's Stable Diffusion loader reads, scaling factor included.
    let vae = AutoencoderKl::load(&run.join("vae"), tch::Device::Cpu).unwrap();
    let scaling = summary["scaling_factor"].as_f64().unwrap();
    assert!((vae.config().scaling_factor - scaling).abs() < 1e-12 && scaling > 0.0);
    let std = summary["latents"]["std"].as_f64().unwrap();
    assert!((scaling * std - 1.0).abs() < 1e-9, "scaling factor {scaling} is not 1/std ({std})");
    assert_eq!(vae.downscale(), 4);
    // The parity file holds the best weights' outputs: the loaded VAE gives them again.
    let parity = Tensor::read_safetensors(run.join("vae-parity.safetensors")).unwrap();
    let get = |name: &str| parity.iter().find(|(n, _)| n == name).map(|(_, t)| t.shallow_clone()).unwrap();
    let mean = tch::no_grad(|| vae.encode(&get("images")).unwrap().mean);
    assert!(mean.allclose(&get("latents"), 1e-5, 1e-6, false), "the exported VAE encodes differently");
    let grid = image::open(run.join("reconstructions.png")).unwrap();
    assert_eq!(grid.height(), 2 * 16 + 3 * 2, "originals above reconstructions");

    // `vae reconstruct` writes what `data judge` reads: one image per validation image asked for.
    let recon = dir.path().join("recon");
    let out = difforge().args(["vae", "reconstruct", "--run"]).arg(&run).arg("--out").arg(&recon).args(["--n", "5"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pngs = std::fs::read_dir(&recon).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "png")).count();
    assert_eq!(pngs, 5);
    assert_eq!(image::open(recon.join("recon-00000.png")).unwrap().width(), 16);
    let out = difforge().args(["vae", "reconstruct", "--run"]).arg(dir.path()).arg("--out").arg(&recon).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--run"), "a folder without vae/ must be refused by flag");
}

/// Kills a run once it has checkpointed step 10 and logged step 12, then resumes it.
fn kill_and_resume(config: &Path, run: &Path) {
    kill_mid_run(&["vae".as_ref(), "train".as_ref(), "--config".as_ref(), config.as_os_str(), "--out".as_ref(), run.as_os_str()], run, 10, 12);
    assert!(!run.join("summary.json").exists(), "the run was not interrupted");
    let out = difforge().args(["vae", "train", "--resume"]).arg(run).output().unwrap();
    assert!(out.status.success(), "resume failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn vae_training_resumes_bit_identically_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let (whole, killed) = (dir.path().join("whole"), dir.path().join("killed"));
    vae_train(&config, &whole);
    kill_and_resume(&config, &killed);
    for file in ["vae/diffusion_pytorch_model.safetensors", "checkpoints/step-00000040/optimizer.safetensors", "checkpoints/best/vae.safetensors"] {
        assert!(read(&whole.join(file)) == read(&killed.join(file)), "{file} differs after the resume");
    }
    let records = |run: &Path| -> Vec<String> {
        let text = std::fs::read_to_string(run.join("validation.jsonl")).unwrap();
        text.lines().map(String::from).collect()
    };
    assert_eq!(records(&whole), records(&killed), "validation records differ");
}

/// The perceptual and adversarial terms (discriminator from step 2), on a shorter run.
const WITH_EXTRA_TERMS: &str = "perceptual_weight = 0.5\nperceptual_size = 32\ndiscriminator_weight = 0.1\ndiscriminator_start = 2\n";

#[test]
fn vae_training_with_perceptual_and_discriminator_terms_resumes_bit_identically_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), WITH_EXTRA_TERMS);
    let text = std::fs::read_to_string(&config).unwrap().replace("steps = 40\n", "steps = 20\n");
    std::fs::write(&config, text).unwrap();
    let (whole, killed) = (dir.path().join("whole"), dir.path().join("killed"));
    let summary = vae_train(&config, &whole);
    kill_and_resume(&config, &killed);
    for file in [
        "vae/diffusion_pytorch_model.safetensors",
        "checkpoints/step-00000020/optimizer.safetensors",
        "checkpoints/step-00000020/discriminator.safetensors",
        "checkpoints/step-00000020/discriminator-optimizer.safetensors",
        "checkpoints/best/vae.safetensors",
    ] {
        assert!(read(&whole.join(file)) == read(&killed.join(file)), "{file} differs after the resume");
    }
    let lines = |run: &Path, name: &str| -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(run.join(name)).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    assert_eq!(lines(&whole, "validation.jsonl"), lines(&killed, "validation.jsonl"), "validation records differ");
    // The terms are in the loss: the perceptual one from the start, the adversarial ones from step 2.
    let metrics = lines(&whole, "metrics.jsonl");
    assert!(metrics[0]["perceptual"].as_f64().is_some_and(|p| p > 0.0), "{}", metrics[0]);
    assert!(metrics[0].get("discriminator").is_none() && metrics[1].get("discriminator").is_none(), "the discriminator started before step 2");
    assert!(metrics[2]["discriminator"].as_f64().is_some() && metrics[2]["adversarial"].as_f64().is_some(), "{}", metrics[2]);
    for run in [&whole, &killed] {
        let state: serde_json::Value = serde_json::from_slice(&read(&run.join("checkpoints/step-00000020/state.json"))).unwrap();
        assert_eq!(state["discriminator_steps"], 18, "discriminator updates in steps 2..20");
    }
    // The report: FD-EffNet of the reconstructions and per-channel latent statistics.
    assert!(summary["fd_effnet"].as_f64().is_some_and(|fd| fd.is_finite() && fd > 0.0), "{}", summary["fd_effnet"]);
    assert_eq!(summary["latents"]["channel_std"].as_array().map(Vec::len), Some(4));
}

#[test]
fn bad_vae_loss_keys_are_refused_before_a_run_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let config = write_config(dir.path(), "");
    for (set, key, says) in [
        ("vae.perceptual_weight=-0.5", "vae.perceptual_weight", "0 <= perceptual_weight <= 100"),
        ("vae.discriminator_weight=20.0", "vae.discriminator_weight", "0 <= discriminator_weight <= 10"),
        ("vae.perceptual_stages=9", "vae.perceptual_stages", "1..=7"),
    ] {
        let out = difforge().args(["vae", "train", "--config"]).arg(&config).args(["--set", set, "--out"]).arg(&run).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(key) && err.contains(says), "{set}: {err}");
    }
    // A missing weights file is named with its key before anything is written.
    let missing = dir.path().join("no-such-effnet.pth");
    let config = write_config(dir.path(), &format!("perceptual_weight = 0.5\nperceptual_weights_path = \"{}\"\n", missing.display()));
    let out = difforge().args(["vae", "train", "--config"]).arg(&config).arg("--out").arg(&run).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("vae.perceptual_weights_path") && err.contains("no-such-effnet.pth"), "{err}");
    assert!(!run.exists(), "a refused config wrote a run folder");
}

#[test]
fn bad_vae_configs_are_refused_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    for (extra_train, key) in [("ema_decay = 0.99\n", "train.ema_decay"), ("grad_accum = 0\n", "train.grad_accum")] {
        let config = write_config(dir.path(), "").to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&config).unwrap().replace("[train]\n", &format!("[train]\n{extra_train}"));
        std::fs::write(&config, text).unwrap();
        let out = difforge().args(["vae", "train", "--config", &config]).arg("--out").arg(&run).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(key), "{key}: {err}");
    }
    let config = write_config(dir.path(), "");
    let out = difforge().args(["vae", "train", "--config"]).arg(&config).args(["--set", "data.image_size=18", "--out"]).arg(&run).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("data.image_size") && err.contains("multiple of 4"), "{err}");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = difforge().args(["vae", "train", "--resume"]).arg(&empty).output().unwrap();
    assert!(!out.status.success(), "resuming a folder without a run must fail");
    assert!(!run.join("checkpoints").exists(), "a refused config wrote a run");
}
