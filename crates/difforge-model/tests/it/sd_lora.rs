//! LoRA files as people download them, merged into the tiny SD 1.5 fixture, against diffusers
//! 0.35.2's `load_lora_weights` (tools/make_sd_lora_fixtures.py: rank 4, alpha 8 on the UNet's
//! attention projections, one 3x3 conv and the text encoder's attention): kohya's layout,
//! diffusers' with its adapter metadata and without it; and the errors that name the key.

use difforge_model::stable_diffusion::{LoraFormat, StableDiffusion};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn sd15() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../difforge-nn/tests/fixtures/sd/tiny-sd15")
}

fn lora_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd-lora").join(name)
}

fn read(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

/// The UNet output and text encoder's last hidden state on the tiny SD 1.5 reference inputs.
fn outputs(sd: &StableDiffusion) -> (Tensor, Tensor) {
    let refs = read(&sd15().join("reference.safetensors"));
    tch::no_grad(|| {
        let unet = sd.unet.forward(&refs["unet.sample"], &refs["unet.timesteps"], &refs["unet.encoder_hidden_states"], None).unwrap();
        let text = sd.text_encoders[0].forward(&refs["text.input_ids"]).unwrap().last_hidden_state;
        (unet, text)
    })
}

/// Largest |a - b| relative to max |b|.
fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    (&a - &b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(1e-12)
}

#[test]
fn kohya_and_diffusers_lora_files_give_diffusers_outputs() {
    let refs = read(&lora_fixture("reference.safetensors"));
    let (base_unet, _) = outputs(&StableDiffusion::load(&sd15(), Device::Cpu).unwrap());
    for (stem, format) in [("kohya", LoraFormat::Kohya), ("peft", LoraFormat::Diffusers), ("peft-nometa", LoraFormat::Diffusers)] {
        let mut sd = StableDiffusion::load(&sd15(), Device::Cpu).unwrap();
        let report = sd.apply_lora(&lora_fixture(&format!("{stem}.safetensors")), 1.0).unwrap();
        assert_eq!(report.format, format, "{stem}");
        let patched: Vec<(&str, usize)> = report.patched.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        // 4 attention blocks x 2 attentions x 4 projections + 1 conv; 3 layers x 4 projections.
        assert_eq!(patched, [("text_encoder", 12), ("unet", 33)], "{stem}");
        let (unet, text) = outputs(&sd);
        let unet_err = relative_error(&unet, &refs[&format!("{stem}.unet.output")]);
        let text_err = relative_error(&text, &refs[&format!("{stem}.text.last_hidden_state")]);
        eprintln!("{stem}: UNet output relative error {unet_err:e}, text encoder {text_err:e}");
        // Measured on the 2-core development machine: see the README's Stable Diffusion section.
        assert!(unet_err < 1e-4 && text_err < 1e-4, "{stem}: UNet {unet_err:e}, text encoder {text_err:e}");
        assert!(relative_error(&unet, &base_unet) > 1e-2, "{stem}: the LoRA changes the UNet");
    }
}

#[test]
fn a_lora_at_scale_zero_changes_nothing_and_two_halves_make_one_whole() {
    let (base_unet, base_text) = outputs(&StableDiffusion::load(&sd15(), Device::Cpu).unwrap());
    let mut sd = StableDiffusion::load(&sd15(), Device::Cpu).unwrap();
    let report = sd.apply_lora(&lora_fixture("kohya.safetensors"), 0.0).unwrap();
    assert_eq!(report.modules(), 45);
    let (unet, text) = outputs(&sd);
    assert!(unet.equal(&base_unet) && text.equal(&base_text), "scale 0 leaves the model as it was");

    let refs = read(&lora_fixture("reference.safetensors"));
    for _ in 0..2 {
        sd.apply_lora(&lora_fixture("peft.safetensors"), 0.5).unwrap();
    }
    let (unet, text) = outputs(&sd);
    assert!(relative_error(&unet, &refs["peft.unet.output"]) < 1e-4, "LoRAs merge one after the other");
    assert!(relative_error(&text, &refs["peft.text.last_hidden_state"]) < 1e-4);
}

/// The kohya fixture with `edit` applied to its tensors, written to `dir`.
fn edited_kohya(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> PathBuf {
    let mut tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(lora_fixture("kohya.safetensors")).unwrap();
    edit(&mut tensors);
    let path = dir.join("edited.safetensors");
    Tensor::write_safetensors(&tensors, &path).unwrap();
    path
}

const TO_Q: &str = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q";

#[test]
fn a_key_that_matches_no_module_is_an_error_naming_it_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = "lora_unet_down_blocks_1_attentions_7_transformer_blocks_0_attn1_to_q";
    let path = edited_kohya(dir.path(), |tensors| {
        for (name, _) in tensors.iter_mut().filter(|(n, _)| n.starts_with(&format!("{TO_Q}."))) {
            *name = name.replace(TO_Q, wrong);
        }
    });
    let mut sd = StableDiffusion::load(&sd15(), Device::Cpu).unwrap();
    let (base_unet, _) = outputs(&sd);
    let err = sd.apply_lora(&path, 1.0).unwrap_err().to_string();
    assert!(err.contains(wrong) && err.contains("matches no linear or conv module of the unet"), "{err}");
    assert!(err.contains(&format!("the nearest is `{TO_Q}`")), "{err}");
    assert!(outputs(&sd).0.equal(&base_unet), "a file that fails changes nothing");
}

#[test]
fn a_shape_that_does_not_fit_names_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_kohya(dir.path(), |tensors| {
        let up = tensors.iter_mut().find(|(n, _)| *n == format!("{TO_Q}.lora_up.weight")).unwrap();
        up.1 = Tensor::zeros([5, 4], (Kind::Float, Device::Cpu));
    });
    let mut sd = StableDiffusion::load(&sd15(), Device::Cpu).unwrap();
    let err = sd.apply_lora(&path, 1.0).unwrap_err().to_string();
    assert!(err.contains(TO_Q) && err.contains("up [5, 4]") && err.contains("of shape [8, 8]"), "{err}");
}

/// A NaN or infinite weight rendered a black image with exit 0; adapter metadata whose values
/// scale nothing sensible (a negative or string alpha, rank 0) was accepted.
#[test]
fn non_finite_weights_and_bad_adapter_metadata_are_refused_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_kohya(dir.path(), |tensors| {
        let up = tensors.iter_mut().find(|(n, _)| *n == format!("{TO_Q}.lora_up.weight")).unwrap();
        let _ = up.1.get(0).get(0).fill_(f64::NAN);
    });
    let mut sd = StableDiffusion::load(&sd15(), Device::Cpu).unwrap();
    let (base_unet, _) = outputs(&sd);
    let err = sd.apply_lora(&path, 1.0).unwrap_err().to_string();
    assert!(err.contains(&format!("{TO_Q}.lora_up.weight")) && err.contains("1 of its 32 values are NaN or infinite"), "{err}");
    assert!(outputs(&sd).0.equal(&base_unet), "a file that fails changes nothing");

    let tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(lora_fixture("peft.safetensors")).unwrap();
    for (config, expected) in [
        (r#"{"unet.lora_alpha": -1e30}"#, "`unet.lora_alpha` = -1e+30"),
        (r#"{"unet.lora_alpha": "8"}"#, "`unet.lora_alpha` = \"8\""),
        (r#"{"unet.r": 0}"#, "`unet.r` = 0"),
        (r#"{"unet.alpha_pattern": {"to_q": "NaN"}}"#, "`unet.alpha_pattern`"),
    ] {
        let path = dir.path().join("peft-bad.safetensors");
        let metadata = HashMap::from([("lora_adapter_metadata".to_string(), config.to_string())]);
        difforge_nn::weights::save_with_metadata(&path, &tensors, &metadata).unwrap();
        let err = sd.apply_lora(&path, 1.0).unwrap_err().to_string();
        assert!(err.contains("lora_adapter_metadata") && err.contains(expected), "{config}: {err}");
    }
}

#[test]
fn keys_of_other_layouts_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let old = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight";
    let path = dir.path().join("old.safetensors");
    Tensor::write_safetensors(&[(old, Tensor::zeros([4, 8], (Kind::Float, Device::Cpu)))], &path).unwrap();
    let mut sd = StableDiffusion::load(&sd15(), Device::Cpu).unwrap();
    let err = sd.apply_lora(&path, 1.0).unwrap_err().to_string();
    assert!(err.contains(old) && err.contains("older attention-processor format"), "{err}");
}

#[test]
fn a_file_converted_to_the_other_layout_still_gives_diffusers_outputs() {
    let refs = read(&lora_fixture("reference.safetensors"));
    let dir = tempfile::tempdir().unwrap();
    let base = StableDiffusion::load(&sd15(), Device::Cpu).unwrap();
    // kohya -> diffusers, diffusers (from its adapter metadata's alpha) -> kohya, and back.
    let cases = [("kohya", LoraFormat::Diffusers), ("peft", LoraFormat::Kohya), ("peft-nometa", LoraFormat::Kohya)];
    for (stem, to) in cases {
        let converted = dir.path().join(format!("{stem}-as-{}.safetensors", to.name()));
        assert_eq!(base.convert_lora(&lora_fixture(&format!("{stem}.safetensors")), to, &converted).unwrap(), 45, "{stem}");
        let mut sd = StableDiffusion::load(&sd15(), Device::Cpu).unwrap();
        assert_eq!(sd.apply_lora(&converted, 1.0).unwrap().format, to, "{stem}");
        let (unet, text) = outputs(&sd);
        let unet_err = relative_error(&unet, &refs[&format!("{stem}.unet.output")]);
        let text_err = relative_error(&text, &refs[&format!("{stem}.text.last_hidden_state")]);
        assert!(unet_err < 1e-4 && text_err < 1e-4, "{stem} as {}: UNet {unet_err:e}, text encoder {text_err:e}", to.name());
    }
    // Converting back gives the original layout's keys.
    let there = dir.path().join("kohya-as-diffusers.safetensors");
    let back = dir.path().join("back.safetensors");
    base.convert_lora(&there, LoraFormat::Kohya, &back).unwrap();
    let (mut original, mut again): (Vec<String>, Vec<String>) =
        (read(&lora_fixture("kohya.safetensors")).into_keys().collect(), read(&back).into_keys().collect());
    original.sort();
    again.sort();
    assert_eq!(original, again);
}
