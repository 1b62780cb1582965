//! A text-to-image model from scratch, stage by stage on a small synthetic shapes set: `vae
//! train`, then `sd init` (the VAE with a fresh UNet and CLIP text encoder, a CLIP-form tokenizer
//! learnt from the captions), then the Stable Diffusion family trains every UNet and text-encoder weight and
//! exports a diffusers folder that `sample` generates from and `data judge` scores from the
//! prompts in the PNGs. One config with `[model.new]` runs the same stages into one run folder,
//! to the same bytes, and a run killed in its VAE stage resumes there.

use crate::common::{difforge, kill_mid_run};
use crate::sd_finetune::train_and_check_resume;
use crate::serve::{call, start, KEY};
use difforge_nn::sd::tokenizer::ClipTokenizer;
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
steps = 12
batch_size = 8
val_every = 4
val_images = 8
checkpoint_every = 4
log_every = 1
threads = 1
[vae]
block_out_channels = [8, 16, 16]
norm_num_groups = 8
"#;

/// The text-to-image run on `base`, text encoder training too.
fn t2i_config(data: &Path, base: &Path) -> String {
    let model = format!("[model]\nfamily = \"stable-diffusion\"\nbase = \"{}\"\ntrain_text_encoder = true\n", base.display());
    data_section(data) + &model + T2I_REST
}

/// The same run on a new model whose VAE `vae_config` trains first (the sizes of `SMALL`).
fn all_stages_config(data: &Path, vae_config: &Path) -> String {
    let model = format!("[model]\nfamily = \"stable-diffusion\"\ntrain_text_encoder = true\n[model.new]\nvae = \"{}\"\n", vae_config.display());
    let sizes = "unet_channels = [16, 32]\nnorm_groups = 8\nunet_heads = 2\ntext_width = 32\nseed = 3\ntokenizer = \"learned\"\n";
    data_section(data) + &model + sizes + T2I_REST
}

fn data_section(data: &Path) -> String {
    format!("[data]\nsource = \"folder\"\npath = \"{}\"\nimage_size = 32\nchannels = 3\nval_fraction = 0.1\n", data.display())
}

/// `sd init`'s flags for the small networks of these tests (a tokenizer learnt from the captions
/// follows them).
const SMALL: [&str; 12] =
    ["--unet-channels", "16,32", "--norm-groups", "8", "--unet-heads", "2", "--text-width", "32", "--seed", "3", "--tokenizer", "learned"];

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
    std::fs::write(&vae_config, format!("[data]\npath = \"{}\"\n{}", shapes.display(), VAE_CONFIG.replacen("[data]\n", "", 1))).unwrap();
    run_ok(&["vae", "train", "--config", s(&vae_config), "--out", s(&vae_run)]);

    let vae_folder = vae_run.join("vae");
    let init = ["sd", "init", "--vae", s(&vae_folder), "--out", s(&base), "--image-size", "32"];
    run_ok(&[&init[..], &SMALL[..], &["--captions", s(&shapes)]].concat());
    let vae_weights = "vae/diffusion_pytorch_model.safetensors";
    assert!(std::fs::read(base.join(vae_weights)).unwrap() == std::fs::read(vae_run.join(vae_weights)).unwrap(), "the VAE is the trained one");
    // The tokenizer folder is CLIP's: the same ids as the built-in tokenizer.
    let caption = "a small red circle at the top left on a white background";
    // The tokenizer is learnt from the captions: every word of one is a token, and the text
    // encoder's vocabulary is that small.
    let written = ClipTokenizer::load(base.join("tokenizer")).unwrap();
    assert_eq!(written.encode(caption).unwrap().len, 14, "12 words, start and end");
    let text_config: serde_json::Value = serde_json::from_slice(&std::fs::read(base.join("text_encoder/config.json")).unwrap()).unwrap();
    assert_eq!(text_config["vocab_size"].as_u64(), Some(u64::from(written.eos_id()) + 1));
    assert!(written.eos_id() < 700, "{} tokens", written.eos_id() + 1);
    // Never written over, and sizes that cannot build are refused by flag.
    let again = difforge().args([&init[..], &SMALL[..], &["--captions", s(&shapes)]].concat()).output().unwrap();
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

    // One config runs every stage into one folder, to the same bytes; killed in its VAE stage,
    // it resumes there.
    let all = dir.path().join("all");
    let all_config = dir.path().join("all.toml");
    std::fs::write(&all_config, all_stages_config(&shapes, &vae_config)).unwrap();
    let vae_stage = all.join("stages/vae");
    kill_mid_run(&["train".as_ref(), "--config".as_ref(), all_config.as_os_str(), "--out".as_ref(), all.as_os_str()], &vae_stage, 4, 5);
    assert!(!vae_stage.join("summary.json").exists() && !all.join("stages/base").exists(), "killed after the VAE stage");
    let resumed = run_ok(&["train", "--resume", s(&all), "--json"]);
    let resumed: serde_json::Value = serde_json::from_str(&resumed).unwrap();
    assert_eq!((resumed["final_step"].as_u64(), resumed["stages"]["vae_training"]["final_step"].as_u64()), (Some(16), Some(12)), "{resumed}");
    let same = |a: &Path, b: &Path| std::fs::read(a).unwrap() == std::fs::read(b).unwrap();
    assert!(same(&vae_stage.join(vae_weights), &vae_run.join(vae_weights)), "the VAE stage differs from `vae train`");
    for weights in ["unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"] {
        assert!(same(&all.join("diffusers").join(weights), &t2i.join("diffusers").join(weights)), "{weights} differs from the stage-by-stage run");
    }
    let again = difforge().args(["train", "--config", s(&all_config), "--out", s(&all)]).output().unwrap();
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("--resume"), "a finished run is not overwritten");
    let missing = std::fs::read_to_string(&all_config).unwrap().replace("vae.toml", "missing-vae.toml");
    std::fs::write(&all_config, missing).unwrap();
    let refused = difforge().args(["train", "--config", s(&all_config), "--out"]).arg(dir.path().join("refused-vae")).output().unwrap();
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("model.new.vae"));

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

    evaluate_on_captions(&t2i);
    serve_prompts(dir.path(), &t2i, caption);
}

/// `difforge eval` on the text model generates from the real images' captions and scores the
/// samples with the shapes judge and a CLIP model (the tiny random one of
/// tools/make_clip_fixtures.py) besides the usual metrics.
fn evaluate_on_captions(run: &Path) {
    let small = ["--n", "16", "--batch", "8", "--consistency-sets", "1", "--kid-subsets", "2", "--kid-subset-size", "8", "--k", "3", "--steps", "3"];
    let clip = Path::new(env!("CARGO_MANIFEST_DIR")).join("../difforge-nn/tests/fixtures/clip/tiny-clip");
    let report = run_ok(&[&["eval", "--checkpoint", s(run), "--split", "all", "--json", "--clip-model", s(&clip)][..], &small[..]].concat());
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    let prompts = &report["prompts"];
    assert!(prompts["source"].as_str().is_some_and(|s| s.starts_with("captions of the 48 images")), "{prompts}");
    assert!(prompts["distinct"].as_u64().is_some_and(|d| d > 1), "{prompts}");
    assert_eq!(prompts["adherence"]["overall"]["images"], 16, "{prompts}");
    let clip = &prompts["clip_score"];
    assert_eq!(clip["model"], "tiny-clip", "{prompts}");
    for key in ["samples", "real"] {
        assert!(clip[key].as_f64().is_some_and(|v| (0.0..=100.0).contains(&v)), "{key}: {clip}");
    }
    assert_eq!(report["consistency"]["same_seed_identical"], true, "{report}");
    assert!(report["metrics"][0]["frechet_distance"].as_f64().is_some_and(f64::is_finite), "{report}");
}

/// `difforge serve` on the trained run answers prompts (and negative prompts), refuses classes.
fn serve_prompts(dir: &Path, run: &Path, caption: &str) {
    let (config, keys) = (dir.join("serve.toml"), dir.join("keys.txt"));
    std::fs::write(&config, "max_batch = 4\nmax_wait_ms = 20\n").unwrap();
    std::fs::write(&keys, format!("{KEY}\n")).unwrap();
    let server = start(run, &config, &keys);
    let models = call("GET", &format!("{}/v1/models", server.base), Some(KEY), None).json();
    assert_eq!(models["models"][0]["conditioning"], "text", "{models}");
    let generate = |body: &str| call("POST", &format!("{}/v1/generate", server.base), Some(KEY), Some(body));
    let image = |extra: &str| {
        let reply = generate(&format!(r#"{{"seed": 5, "steps": 3, "format": "json"{extra}}}"#));
        assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
        reply.json()["images"][0].as_str().unwrap().to_string()
    };
    let asked = format!(r#", "prompt": "{caption}""#);
    let first = image(&asked);
    assert_eq!(first, image(&asked), "the same prompt and seed give the same bytes");
    assert_ne!(first, image(r#", "prompt": "a large green square at the center on a black background""#), "the prompt matters");
    assert_ne!(first, image(&format!(r#"{asked}, "negative_prompt": "a large green square""#)), "so does the negative prompt");
    let refused = generate(r#"{"class": 1}"#);
    assert_eq!((refused.status, refused.json()["error"]["field"].as_str()), (400, Some("class")));
}
