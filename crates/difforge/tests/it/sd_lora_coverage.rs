//! LoRA coverage for Stable Diffusion fine-tuning on the tiny SD 1.5 fixture: adapters on the
//! CLIP text encoder (`lora.text_encoder`), on the transformers' proj_in/proj_out and
//! feed-forward layers and on the resnets' 3x3 convolutions (LoCon), with adapter dropout. The
//! run resumes exactly after SIGKILL (dropout included), the frozen base (UNet and text encoder)
//! stays byte-identical, the text adapters train, and both exported files hold the expected keys
//! and, merged into the base by `--lora`'s loader, give the trained network's prediction.

use crate::common::difforge;
use crate::sd_finetune::{base, config as finetune_config, train_and_check_resume, write_shapes};
use difforge_model::checkpoint;
use difforge_model::stable_diffusion::StableDiffusion;
use difforge_model::Weights;
use difforge_nn::sd::clip_text::POSITION_IDS;
use difforge_nn::Conditioning;
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// sd_finetune's 16-step LoRA run on `base` with `lora` as the rest of the `[lora]` section.
fn config(data: &Path, base_dir: &Path, lora: &str) -> String {
    let text = finetune_config(data, 16, true).replace(&base().display().to_string(), &base_dir.display().to_string());
    format!("{text}{lora}\n")
}

const EVERYTHING: &str = "targets = [\"attention\", \"projection\", \"feed_forward\", \"conv\"]\ntext_encoder = true\ndropout = 0.1";

fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(1e-12)
}

fn file_tensors(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).into_iter().collect()
}

/// Adapter modules (up weights) of a network's variables: (text encoder, UNet).
fn count_adapters(vars: &[(String, Tensor)]) -> (usize, usize) {
    let ups: Vec<&String> = vars.iter().map(|(n, _)| n).filter(|n| n.ends_with(".lora_up.weight")).collect();
    let text = ups.iter().filter(|n| n.starts_with("text_encoder.")).count();
    (text, ups.len() - text)
}

/// The base's weights stay byte-identical; every adapter up weight moved from zero.
fn check_frozen_base_and_trained_adapters(vars: &[(String, Tensor)]) {
    let unet = file_tensors(&base().join("unet/diffusion_pytorch_model.safetensors"));
    let text = file_tensors(&base().join("text_encoder/model.safetensors"));
    let mut checked = 0;
    for (name, t) in vars {
        if name.contains(".lora_") {
            assert!(!name.ends_with(".lora_up.weight") || t.abs().max().double_value(&[]) > 0.0, "adapter {name} did not train");
            continue;
        }
        let base = match name.strip_prefix("text_encoder.") {
            Some(key) => &text[key],
            None => &unet[name],
        };
        assert!(t.equal(base), "the frozen base weight {name} changed");
        checked += 1;
    }
    let text_weights = text.keys().filter(|k| *k != POSITION_IDS).count();
    assert_eq!(checked, unet.len() + text_weights, "every base weight is in the network");
}

/// Key names of both layouts for a text-encoder projection, proj_in, a feed-forward layer and a
/// resnet conv (with LoCon shapes).
fn check_exported_keys(kohya: &Path, diffusers: &Path) {
    let k = file_tensors(kohya);
    for key in [
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight",
        "lora_te_text_model_encoder_layers_2_self_attn_out_proj.alpha",
        "lora_unet_down_blocks_1_attentions_0_proj_in.lora_up.weight",
        "lora_unet_up_blocks_0_attentions_1_transformer_blocks_0_ff_net_0_proj.lora_down.weight",
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2.lora_up.weight",
        "lora_unet_down_blocks_0_resnets_0_conv1.alpha",
    ] {
        assert!(k.contains_key(key), "{} lacks {key}", kohya.display());
    }
    assert_eq!(k["lora_unet_down_blocks_1_resnets_0_conv2.lora_down.weight"].size(), [4, 8, 3, 3]);
    assert_eq!(k["lora_unet_down_blocks_1_resnets_0_conv2.lora_up.weight"].size(), [8, 4, 1, 1]);
    assert_eq!(k.len(), 3 * (12 + 64), "down, up and alpha of 12 text and 64 UNet modules");
    let d = file_tensors(diffusers);
    for key in [
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight",
        "text_encoder.text_model.encoder.layers.1.self_attn.v_proj.lora_B.weight",
        "unet.down_blocks.1.attentions.0.proj_out.lora_A.weight",
        "unet.up_blocks.0.attentions.0.transformer_blocks.0.ff.net.2.lora_B.weight",
        "unet.up_blocks.1.resnets.1.conv1.lora_A.weight",
    ] {
        assert!(d.contains_key(key), "{} lacks {key}", diffusers.display());
    }
    assert_eq!(d.len(), 2 * (12 + 64));
    let meta = difforge_nn::weights::read_metadata(diffusers).unwrap();
    let config: serde_json::Value = serde_json::from_str(&meta["lora_adapter_metadata"]).unwrap();
    assert_eq!(config["text_encoder.target_modules"].as_array().map(Vec::len), Some(12), "{config}");
    assert_eq!(config["unet.target_modules"].as_array().map(Vec::len), Some(64), "{config}");
}

#[test]
fn sd_lora_on_the_text_encoder_and_every_unet_target_trains_resumes_and_exports_files_that_merge_into_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shapes");
    write_shapes(&data);
    let (run, summary) = train_and_check_resume(dir.path(), "everything", &config(&data, &base(), EVERYTHING));
    let (kohya, diffusers) = (run.join("lora.safetensors"), run.join("pytorch_lora_weights.safetensors"));
    assert_eq!(summary["adapter"].as_str(), kohya.to_str());

    // Checkpoints hold the adapters only: 12 text modules (3 layers x q, k, v, out) and 64 UNet
    // ones (32 attention projections, 8 proj_in/proj_out, 8 feed-forward, 16 resnet convs).
    let ckpt = run.join("checkpoints/step-00000016");
    let held: Vec<(String, Tensor)> = file_tensors(&ckpt.join("model.safetensors")).into_iter().collect();
    assert!(held.iter().all(|(n, _)| n.contains(".lora_")), "the checkpoint holds base weights");
    assert_eq!(count_adapters(&held), (12, 64));
    let model = checkpoint::load_model(&ckpt, &checkpoint::read_config(&ckpt).unwrap(), Device::Cpu).unwrap();
    check_frozen_base_and_trained_adapters(&model.variables(Weights::Raw));
    check_exported_keys(&kohya, &diffusers);

    // Conditioned on token ids, the trained network runs the text adapters; dropout acts in
    // training only.
    let mut sd = StableDiffusion::load(&base(), Device::Cpu).unwrap();
    let ids = sd.tokenizers[0].encode_batch(&["a red square", "a blue circle"]).unwrap();
    tch::manual_seed(11);
    let x = Tensor::randn([2, 4, 8, 8], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[50i64, 700]);
    let cond = Conditioning::Tokens(ids.shallow_clone());
    let trained = tch::no_grad(|| model.predict(Weights::Ema, &x, &t, &cond, false));
    assert!(trained.equal(&tch::no_grad(|| model.predict(Weights::Ema, &x, &t, &cond, false))));
    assert!(!trained.equal(&tch::no_grad(|| model.predict(Weights::Ema, &x, &t, &cond, true))), "adapter dropout in training");
    let merged_prediction = |sd: &StableDiffusion| {
        tch::no_grad(|| {
            let hidden = sd.text_encoders[0].forward(&ids).unwrap().last_hidden_state;
            sd.unet.forward(&x, &t.to_kind(Kind::Float), &hidden, None).unwrap()
        })
    };
    assert!(relative_error(&merged_prediction(&sd), &trained) > 1e-3, "the adapters change the prediction");

    // Each exported file, merged into the base (text encoder and UNet) by the LoRA loader, is the
    // trained (EMA) network.
    for file in [&kohya, &diffusers] {
        sd = StableDiffusion::load(&base(), Device::Cpu).unwrap();
        let report = sd.apply_lora(file, 1.0).unwrap();
        let patched: Vec<(&str, usize)> = report.patched.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(patched, [("text_encoder", 12), ("unet", 64)], "{}", file.display());
        let err = relative_error(&merged_prediction(&sd), &trained);
        assert!(err < 1e-5, "{}: relative error {err:e}", file.display());
    }
}

#[test]
fn adapter_dropout_changes_training_and_sdxl_text_encoder_lora_is_refused_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shapes");
    write_shapes(&data);
    let short = |lora: &str| config(&data, &base(), lora).replace("steps = 16", "steps = 2").replace("checkpoint_every = 8", "checkpoint_every = 2");
    let mut ends = Vec::new();
    for (name, lora) in [("dropout", "dropout = 0.3"), ("plain", "")] {
        let cfg = dir.path().join(format!("{name}.toml"));
        std::fs::write(&cfg, short(lora)).unwrap();
        let out = dir.path().join(name);
        difforge().arg("train").arg("--config").arg(&cfg).arg("--out").arg(&out).assert().success();
        ends.push(std::fs::read(out.join("checkpoints/step-00000002/model.safetensors")).unwrap());
    }
    assert!(ends[0] != ends[1], "adapter dropout changes what trains");

    let sdxl = base().with_file_name("tiny-sdxl");
    let cfg = dir.path().join("sdxl.toml");
    std::fs::write(&cfg, config(&data, &sdxl, "text_encoder = true")).unwrap();
    let out = difforge().arg("train").arg("--config").arg(&cfg).arg("--out").arg(dir.path().join("sdxl")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("lora.text_encoder") && stderr.contains("SDXL"), "{stderr}");
}

#[test]
fn lora_export_rewrites_a_file_in_the_other_layout_and_names_bad_flags() {
    let dir = tempfile::tempdir().unwrap();
    let kohya = Path::new(env!("CARGO_MANIFEST_DIR")).join("../difforge-model/tests/fixtures/sd-lora/kohya.safetensors");
    let out = dir.path().join("peft.safetensors");
    let run = |format: &str, out: &Path| {
        difforge().args(["lora", "export", "--base"]).arg(base()).arg("--lora").arg(&kohya).args(["--format", format, "--out"]).arg(out).output().unwrap()
    };
    let done = run("peft", &out);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert!(String::from_utf8_lossy(&done.stdout).contains("45 modules"));
    let keys: Vec<String> = Tensor::read_safetensors(&out).unwrap().into_iter().map(|(k, _)| k).collect();
    assert!(keys.iter().all(|k| k.starts_with("unet.") || k.starts_with("text_encoder.")), "{keys:?}");
    for (format, out, flag) in [("onnx", out.clone(), "--format"), ("kohya", dir.path().join("x.bin"), "--out")] {
        let refused = run(format, &out);
        assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains(flag), "{flag}");
    }
    // An existing --out is kept unless --overwrite says to replace it.
    let before = std::fs::read(&out).unwrap();
    let refused = run("kohya", &out);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("--out") && stderr.contains("--overwrite"), "{stderr}");
    assert_eq!(std::fs::read(&out).unwrap(), before, "the refused export left the file as it was");
    let replaced = difforge()
        .args(["lora", "export", "--overwrite", "--base"])
        .arg(base())
        .arg("--lora")
        .arg(&kohya)
        .args(["--format", "kohya", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(replaced.status.success(), "{}", String::from_utf8_lossy(&replaced.stderr));
    assert!(Tensor::read_safetensors(&out).unwrap().iter().all(|(k, _)| k.starts_with("lora_")), "now in kohya's layout");
}
