//! Fine-tuning Stable Diffusion on captioned images (the tiny SD 1.5 fixture of
//! tools/make_sd_fixtures.py, 32x32 coloured shapes with their colour and kind as captions):
//! LoRA on the UNet's attention trains with validation and previews, resumes bit-identically
//! after SIGKILL, leaves the base weights untouched, and exports kohya and diffusers files that
//! difforge's own LoRA loader merges into the base to give the trained network; preview grids
//! leave the training untouched; DreamBooth (instance prompt, class prompt, prior images from
//! the base) resumes exactly too; a full fine-tune trains every UNet weight; bad settings are
//! refused with the key named.

use crate::common::{difforge, kill_mid_run};
use difforge_model::checkpoint;
use difforge_model::stable_diffusion::StableDiffusion;
use difforge_model::Weights;
use difforge_nn::{Conditioning, TextConditioning};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

pub(crate) fn base() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../difforge-nn/tests/fixtures/sd/tiny-sd15")
}

/// 18 shapes (3 colours x 2 kinds x 3 positions) with `.txt` captions like "a red square".
pub(crate) fn write_shapes(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let colours = [("red", [220u8, 30, 30]), ("blue", [30, 60, 220]), ("green", [30, 180, 60])];
    let mut i = 0;
    for (name, rgb) in colours {
        for kind in ["square", "circle"] {
            for offset in [4u32, 10, 16] {
                let img = image::RgbImage::from_fn(32, 32, |x, y| {
                    let (dx, dy) = (x as f64 - offset as f64 - 6.0, y as f64 - offset as f64 - 6.0);
                    let inside = if kind == "square" { dx.abs() < 6.0 && dy.abs() < 6.0 } else { dx * dx + dy * dy < 36.0 };
                    image::Rgb(if inside { rgb } else { [240, 240, 240] })
                });
                img.save(dir.join(format!("{i:03}.png"))).unwrap();
                std::fs::write(dir.join(format!("{i:03}.txt")), format!("a {name} {kind}")).unwrap();
                i += 1;
            }
        }
    }
}

pub(crate) fn config(data: &Path, steps: u64, lora: bool) -> String {
    let lora = if lora { "[lora]\nrank = 4\nalpha = 4.0\n" } else { "" };
    format!(
        r#"seed = 3
[data]
source = "folder"
path = "{}"
image_size = 32
channels = 3
val_fraction = 0.2
[model]
family = "stable-diffusion"
base = "{}"
preview_prompts = ["a red square", "a blue circle"]
[diffusion]
schedule = "scaled_linear"
beta_start = 0.00085
beta_end = 0.012
prediction = "epsilon"
class_dropout = 0.1
[train]
steps = {steps}
batch_size = 4
lr = 1e-2
warmup_steps = 0
ema_decay = 0.5
checkpoint_every = 8
val_every = 8
log_every = 1
threads = 1
sample_per_class = 2
[sample]
steps = 4
guidance = 3.0
{lora}"#,
        data.display(),
        base().display()
    )
}

pub(crate) fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

pub(crate) fn train(config: &Path, out: &Path) -> serde_json::Value {
    let output = difforge().arg("train").arg("--config").arg(config).arg("--out").arg(out).arg("--json").output().unwrap();
    assert!(output.status.success(), "train failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("summary JSON")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Kills a run once it has checkpointed step 8 and logged step 10, then resumes it.
fn kill_and_resume(config: &Path, run: &Path) {
    kill_mid_run(&["train".as_ref(), "--config".as_ref(), config.as_os_str(), "--out".as_ref(), run.as_os_str()], run, 8, 10);
    let out = difforge().arg("train").arg("--resume").arg(run).output().unwrap();
    assert!(out.status.success(), "resume failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// The UNet's prediction for fixed latents, timesteps and text states.
fn inputs() -> (Tensor, Tensor, Tensor) {
    tch::manual_seed(11);
    let x = Tensor::randn([2, 4, 16, 16], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[50i64, 700]);
    let context = Tensor::randn([2, 77, 32], (Kind::Float, Device::Cpu));
    (x, t, context)
}

fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(1e-12)
}

/// The final checkpoint's files of two runs are the same bytes, and so are their LoRA files.
fn assert_same_end(a: &Path, b: &Path, step: u64) {
    let ckpt = format!("checkpoints/step-{step:08}");
    for name in ["model.safetensors", "ema.safetensors", "optimizer.safetensors"] {
        assert!(read(&a.join(&ckpt).join(name)) == read(&b.join(&ckpt).join(name)), "{name} differs between {} and {}", a.display(), b.display());
    }
    let exported = ["lora.safetensors", "pytorch_lora_weights.safetensors", "diffusers/unet/diffusion_pytorch_model.safetensors", "model.safetensors"];
    let present: Vec<&str> = exported.into_iter().filter(|f| a.join(f).is_file()).collect();
    assert!(!present.is_empty(), "{} exported nothing", a.display());
    for file in present {
        assert!(read(&a.join(file)) == read(&b.join(file)), "{file} differs between {} and {}", a.display(), b.display());
    }
}

/// Trains `text` uninterrupted and killed-then-resumed: both end with the same bytes.
pub(crate) fn train_and_check_resume(dir: &Path, name: &str, text: &str) -> (PathBuf, serde_json::Value) {
    let cfg = write_config(dir, &format!("{name}.toml"), text);
    let reference = dir.join(name);
    let summary = train(&cfg, &reference);
    assert_eq!(summary["final_step"], 16);
    assert!(summary["final_validation"]["val_loss_ema"].as_f64().is_some_and(f64::is_finite), "{summary}");
    let killed = dir.join(format!("{name}-killed"));
    kill_and_resume(&cfg, &killed);
    assert_same_end(&reference, &killed, 16);
    (reference, summary)
}

#[test]
fn sd_lora_trains_resumes_exactly_and_exports_files_that_merge_into_the_trained_network() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shapes");
    write_shapes(&data);
    let long = format!("a red square, {}", ["with a very long and detailed description"; 12].join(", "));
    std::fs::write(data.join("000.txt"), long).unwrap();
    let (reference, summary) = train_and_check_resume(dir.path(), "lora", &config(&data, 16, true));
    let check = std::fs::read_to_string(reference.join("data-check.json")).unwrap();
    let check: serde_json::Value = serde_json::from_str(&check).unwrap();
    let long = &check["captions"]["over_token_limit"];
    assert!(long[0]["path"].as_str().is_some_and(|p| p.ends_with("000.png")) && long.as_array().unwrap().len() == 1, "{long}");
    assert!(reference.join("samples/step-00000016.png").is_file(), "preview grid of the two prompts");
    let (kohya, diffusers) = (reference.join("lora.safetensors"), reference.join("pytorch_lora_weights.safetensors"));
    assert_eq!(summary["adapter"].as_str(), kohya.to_str());

    // Preview grids every 4 steps do not touch the training's random streams.
    let with_samples = config(&data, 16, true).replace("sample_per_class = 2", "sample_per_class = 2\nsample_every = 4");
    let sampled = dir.path().join("sampled");
    train(&write_config(dir.path(), "sampled.toml", &with_samples), &sampled);
    assert!(sampled.join("samples/step-00000004.png").is_file());
    assert_same_end(&reference, &sampled, 16);

    // Its checkpoints hold the adapters only (the base is read from model.base).
    for file in ["model.safetensors", "ema.safetensors"] {
        let held = Tensor::read_safetensors(reference.join("checkpoints/step-00000016").join(file)).unwrap();
        assert!(held.len() == 64 && held.iter().all(|(n, _)| n.contains(".lora_")), "{file} holds {} tensors", held.len());
    }

    // The trained network: the base's weights untouched, adapters that moved.
    let ckpt = reference.join("checkpoints/step-00000016");
    let run_cfg = checkpoint::read_config(&ckpt).unwrap();
    let model = checkpoint::load_model(&ckpt, &run_cfg, Device::Cpu).unwrap();
    let base_unet: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(base().join("unet/diffusion_pytorch_model.safetensors")).unwrap().into_iter().collect();
    let mut adapters = 0;
    for (name, t) in model.variables(Weights::Raw) {
        match base_unet.get(&name) {
            Some(b) => assert!(t.equal(b), "the frozen base weight {name} changed"),
            None if name.ends_with(".lora_up.weight") => {
                adapters += 1;
                assert!(t.abs().max().double_value(&[]) > 0.0, "adapter {name} did not train");
            }
            None => assert!(name.ends_with(".lora_down.weight"), "unexpected variable {name}"),
        }
    }
    assert_eq!(adapters, 32, "4 transformers x 2 attentions x 4 projections");
    // The EMA weights hold the frozen base in the raw weights' memory, not in a copy.
    let raw: std::collections::HashMap<String, Tensor> = model.variables(Weights::Raw).into_iter().collect();
    for (name, ema) in model.variables(Weights::Ema) {
        let shared = ema.data_ptr() == raw[&name].data_ptr();
        assert_eq!(shared, !name.contains(".lora_"), "{name}: shared storage {shared}");
    }

    // Each exported file, merged into the base by the LoRA loader, is the trained (EMA) network.
    let (x, t, context) = inputs();
    let cond = Conditioning::Text(TextConditioning { hidden: context.shallow_clone(), mask: None, pooled: None, time_ids: None });
    let trained = tch::no_grad(|| model.predict(Weights::Ema, &x, &t, &cond, false));
    let plain = tch::no_grad(|| StableDiffusion::load(&base(), Device::Cpu).unwrap().unet.forward(&x, &t.to_kind(Kind::Float), &context, None).unwrap());
    assert!(relative_error(&plain, &trained) > 1e-3, "the adapters change the prediction");
    for file in [&kohya, &diffusers] {
        let mut sd = StableDiffusion::load(&base(), Device::Cpu).unwrap();
        let report = sd.apply_lora(file, 1.0).unwrap();
        assert_eq!(report.modules(), 32, "{}", file.display());
        let merged = tch::no_grad(|| sd.unet.forward(&x, &t.to_kind(Kind::Float), &context, None).unwrap());
        let err = relative_error(&merged, &trained);
        assert!(err < 1e-5, "{}: relative error {err:e}", file.display());
    }

    // The run samples from a prompt.
    let png = dir.path().join("fox.png");
    difforge().args(["sample", "--n", "2", "--prompt", "a red circle", "--checkpoint"]).arg(&reference).arg("--out").arg(&png).assert().success();
    assert!(png.is_file());
}

#[test]
fn sd_dreambooth_with_prior_preservation_trains_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shapes");
    write_shapes(&data);
    let text = config(&data, 16, true).replace("channels = 3\n", "channels = 3\ninstance_prompt = \"a photo of sks shape\"\n")
        + "[finetune]\nprior_preservation = true\nclass_prompt = \"a photo of a shape\"\nprior_per_class = 4\nprior_weight = 1.0\n";
    let (run, _) = train_and_check_resume(dir.path(), "dreambooth", &text);
    // The class images are kept in the run (diffusers' class_data_dir), with their captions; the
    // killed run's resume read them back (and ended with the same bytes).
    let classes = run.join("class_images");
    for i in 0..4 {
        let png = classes.join(format!("{i:05}.png"));
        assert_eq!(image::open(&png).unwrap().to_rgb8().dimensions(), (32, 32), "{}", png.display());
        assert_eq!(std::fs::read_to_string(png.with_extension("txt")).unwrap(), "a photo of a shape");
        assert!(read(&png) == read(&dir.path().join("dreambooth-killed/class_images").join(format!("{i:05}.png"))));
    }
    // The loss is logged with its instance and prior parts (prior weight 1).
    let first: serde_json::Value = serde_json::from_str(std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().next().unwrap()).unwrap();
    let (loss, instance, prior) = (first["loss"].as_f64().unwrap(), first["loss_instance"].as_f64().unwrap(), first["loss_prior"].as_f64().unwrap());
    assert!(prior > 0.0 && instance > 0.0 && (instance + prior - loss).abs() < 1e-9, "{first}");
    let log = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(log.contains("instance_prompt = \"a photo of sks shape\"") && log.contains("class_prompt = \"a photo of a shape\""), "{log}");
    // The prior images move the result: the same run without them ends elsewhere.
    let plain = dir.path().join("plain");
    let without = text.replace("prior_preservation = true", "prior_preservation = false");
    train(&write_config(dir.path(), "plain.toml", &without), &plain);
    let ckpt = "checkpoints/step-00000016/model.safetensors";
    assert!(read(&run.join(ckpt)) != read(&plain.join(ckpt)), "prior preservation changes training");
}

/// The cache's files and their modification times.
fn cache_files(dir: &Path) -> Vec<(PathBuf, std::time::SystemTime)> {
    let mut files = Vec::new();
    for vae in std::fs::read_dir(dir).unwrap() {
        for shard in std::fs::read_dir(vae.unwrap().path()).unwrap() {
            for f in std::fs::read_dir(shard.unwrap().path()).unwrap() {
                let f = f.unwrap();
                files.push((f.path(), f.metadata().unwrap().modified().unwrap()));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn sdxl_lora_trains_on_both_encoders_and_exports_files_that_merge_into_the_trained_network() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shapes");
    write_shapes(&data);
    let sdxl = base().with_file_name("tiny-sdxl");
    let text = config(&data, 8, true).replace(&base().display().to_string(), &sdxl.display().to_string());
    let run = dir.path().join("sdxl");
    train(&write_config(dir.path(), "sdxl.toml", &text), &run);
    let ckpt = run.join("checkpoints/step-00000008");
    let model = checkpoint::load_model(&ckpt, &checkpoint::read_config(&ckpt).unwrap(), Device::Cpu).unwrap();
    let adapters = model.variables(Weights::Ema).iter().filter(|(n, _)| n.ends_with(".lora_up.weight")).count();
    // SDXL's conditioning: both encoders' states (32 + 32), the pooled projection (32) and the
    // six size ids of a 32x32 image.
    let (x, t, _) = inputs();
    let context = Tensor::randn([2, 77, 64], (Kind::Float, Device::Cpu));
    let pooled = Tensor::randn([2, 32], (Kind::Float, Device::Cpu));
    let time_ids = Tensor::from_slice(&[32f32, 32.0, 0.0, 0.0, 32.0, 32.0]).unsqueeze(0).repeat([2, 1]);
    let cond = Conditioning::Text(TextConditioning {
        hidden: context.shallow_clone(),
        mask: None,
        pooled: Some(pooled.shallow_clone()),
        time_ids: Some(time_ids.shallow_clone()),
    });
    let trained = tch::no_grad(|| model.predict(Weights::Ema, &x, &t, &cond, false));
    let added = difforge_nn::sd::unet_2d_condition::TextTimeInput { text_embeds: &pooled, time_ids: &time_ids };
    for file in ["lora.safetensors", "pytorch_lora_weights.safetensors"] {
        let mut sd = StableDiffusion::load(&sdxl, Device::Cpu).unwrap();
        assert_eq!(sd.apply_lora(&run.join(file), 1.0).unwrap().modules(), adapters, "{file}");
        let merged = tch::no_grad(|| sd.unet.forward(&x, &t.to_kind(Kind::Float), &context, Some(&added)).unwrap());
        let err = relative_error(&merged, &trained);
        assert!(err < 1e-5, "{file}: relative error {err:e}");
    }
}

#[test]
fn cached_latents_are_reused_across_runs_and_a_damaged_one_is_encoded_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shapes");
    write_shapes(&data);
    let cache = dir.path().join("latents");
    let text = config(&data, 16, true)
        .replace("val_fraction = 0.2\n", "val_fraction = 0.2\naugment = { hflip = 0.5 }\n")
        .replace("preview_prompts = [", &format!("cache_dir = \"{}\"\npreview_prompts = [", cache.display()));
    let cfg = write_config(dir.path(), "cached.toml", &text);
    let (first, second, third) = (dir.path().join("first"), dir.path().join("second"), dir.path().join("third"));
    train(&cfg, &first);
    let files = cache_files(&cache);
    assert!(files.len() > 18, "flipped variants are cached beside the originals: {} files for 18 images", files.len());
    train(&cfg, &second);
    assert_eq!(cache_files(&cache), files, "the second run reads every latent and writes none");
    assert_same_end(&first, &second, 16);
    std::fs::write(&files[0].0, b"not latents").unwrap();
    let output = difforge().arg("train").arg("--config").arg(&cfg).arg("--out").arg(&third).output().unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("encoding the image again"), "{}", String::from_utf8_lossy(&output.stderr));
    assert_same_end(&first, &third, 16);
}

#[test]
fn a_full_sd_fine_tune_trains_every_unet_weight_resumes_exactly_and_exports_a_diffusers_folder_and_a_single_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shapes");
    write_shapes(&data);
    let text = config(&data, 16, false).replace("threads = 1\n", "threads = 1\nexport = [\"diffusers\", \"single-file\"]\n");
    let (run, summary) = train_and_check_resume(dir.path(), "full", &text);
    assert!(summary["adapter"].is_null());
    let folder = run.join("diffusers");
    assert_eq!(summary["exported"][0].as_str(), folder.to_str());
    let file = run.join("model.safetensors");
    assert_eq!(summary["exported"][1].as_str(), file.to_str());
    // The single file (read with the base's configs) renders what the folder renders.
    let render = |checkpoint: &Path, extra: &[&str], out: &str| {
        let out = dir.path().join(out);
        let args = ["--prompt", "a red square", "--seed", "2", "--steps", "3", "--out"];
        difforge().arg("sample").arg("--checkpoint").arg(checkpoint).args(extra).args(args).arg(&out).assert().success();
        read(&out)
    };
    let from_file = image::load_from_memory(&render(&file, &["--config", base().to_str().unwrap()], "file.png")).unwrap().to_rgb8();
    let from_folder = image::load_from_memory(&render(&folder, &[], "folder.png")).unwrap().to_rgb8();
    assert!(from_file == from_folder, "the single file is the exported folder's model");
    let ckpt = run.join("checkpoints/step-00000016");
    let model = checkpoint::load_model(&ckpt, &checkpoint::read_config(&ckpt).unwrap(), Device::Cpu).unwrap();
    let base_unet: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(base().join("unet/diffusion_pytorch_model.safetensors")).unwrap().into_iter().collect();
    let changed = model.variables(Weights::Raw).iter().filter(|(n, t)| !t.equal(&base_unet[n])).count();
    assert_eq!(changed, base_unet.len(), "every UNet weight trains");
    // The exported folder is the base with the trained (EMA) UNet.
    let (x, t, context) = inputs();
    let cond = Conditioning::Text(TextConditioning { hidden: context.shallow_clone(), mask: None, pooled: None, time_ids: None });
    let trained = tch::no_grad(|| model.predict(Weights::Ema, &x, &t, &cond, false));
    let exported = StableDiffusion::load(&folder, Device::Cpu).unwrap();
    let out = tch::no_grad(|| exported.unet.forward(&x, &t.to_kind(Kind::Float), &context, None).unwrap());
    assert!(out.equal(&trained), "the exported UNet is the trained one");
}

/// Copies a folder tree.
pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[test]
fn an_adapter_checkpoint_is_refused_on_a_changed_base() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shapes");
    write_shapes(&data);
    let own_base = dir.path().join("base");
    copy_dir(&base(), &own_base);
    let text = config(&data, 8, true).replace("steps = 8", "steps = 4").replace(&base().display().to_string(), &own_base.display().to_string());
    let run = dir.path().join("run");
    train(&write_config(dir.path(), "own.toml", &text), &run);
    // The same base loads; a re-saved base with one weight changed does not.
    let sample = || {
        difforge()
            .args(["sample", "--n", "1", "--prompt", "a red circle", "--checkpoint"])
            .arg(&run)
            .arg("--out")
            .arg(dir.path().join("x.png"))
            .output()
            .unwrap()
    };
    assert!(sample().status.success());
    let unet = own_base.join("unet/diffusion_pytorch_model.safetensors");
    let mut tensors = Tensor::read_safetensors(&unet).unwrap();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let last = tensors.len() - 1;
    tensors[last].1 = &tensors[last].1 + 1.0;
    Tensor::write_safetensors(&tensors, &unet).unwrap();
    let out = sample();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("was trained on another base"), "{stderr}");
}

#[test]
fn bad_sd_fine_tune_settings_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shapes");
    write_shapes(&data);
    let good = config(&data, 2, true);
    let bare = dir.path().join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::copy(data.join("000.png"), bare.join("000.png")).unwrap();
    std::fs::copy(data.join("001.png"), bare.join("001.png")).unwrap();
    let cases = [
        (good.replace("schedule = \"scaled_linear\"", "schedule = \"cosine\""), "beta_start = 0.00085"),
        (good.replace("alpha = 4.0", "alpha = 4.0\ntargets = [\"embedding\"]"), "lora.targets"),
        (good.replace("alpha = 4.0", "alpha = 4.0\ndropout = 1.5"), "lora.dropout"),
        (good.replace(&base().display().to_string(), "/nonexistent/sd15"), "model.base"),
        (good.replace("image_size = 32", "image_size = 30"), "model.image_size"),
        (good.clone() + "[finetune]\nprior_preservation = true\n", "finetune.class_prompt"),
        (good.replace(&data.display().to_string(), &bare.display().to_string()), "no image has a caption"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let cfg = write_config(dir.path(), &format!("bad{i}.toml"), text);
        let out = difforge().arg("train").arg("--config").arg(&cfg).arg("--out").arg(dir.path().join(format!("bad{i}"))).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(expected), "case {i}: expected an error naming {expected}, got: {stderr}");
    }
}
