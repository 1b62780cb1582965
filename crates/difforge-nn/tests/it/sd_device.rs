//! The SD UNet makes its tensors on its input's device: a host tensor copied up inside a forward
//! pass synchronises with the GPU, which CUDA graph capture forbids. Checked without a GPU on
//! libtorch's meta device (shapes, no data): an op mixing a meta tensor with one made on the
//! host fails. libtorch has no meta kernels for convolutions, group and layer norms, attention
//! or embedding lookups (PyTorch's are Python code), so the whole forward cannot run on meta:
//! the time embedding, where the forward makes tensors of its own, runs there alone, and the
//! rest is covered by `denoiser_forward_sources_make_no_host_tensors`.

use crate::sd_reference::{fixture, References};
use difforge_native::move_to_meta;
use difforge_nn::sd::embeddings::timestep_features;
use difforge_nn::sd::unet_2d_condition::{TextTimeInput, UNet2DConditionModel};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// A meta tensor of `t`'s shape and dtype.
fn meta(t: &Tensor) -> Tensor {
    let mut m = t.copy();
    move_to_meta(&mut m).unwrap();
    m
}

/// True when `t` is a meta tensor: mixing it with a host tensor fails, naming both devices.
fn is_meta(t: &Tensor) -> bool {
    let host = Tensor::zeros(t.size(), (t.kind(), Device::Cpu));
    t.f_add(&host).is_err_and(|e| e.to_string().contains("meta and cpu"))
}

/// The fixture's UNet with every variable on meta.
fn meta_unet(name: &str) -> UNet2DConditionModel {
    let (vs, unet) = UNet2DConditionModel::load(&fixture(name).join("unet"), None, Device::Cpu).unwrap();
    tch::no_grad(|| vs.variables().into_values().for_each(|mut v| move_to_meta(&mut v).unwrap()));
    unet
}

#[test]
fn a_host_tensor_mixed_into_meta_work_fails() {
    // The mechanism the other tests rely on.
    let t = meta(&Tensor::from_slice(&[1.0f32, 2.0]));
    assert!(is_meta(&t));
    assert!(t.f_mul(&Tensor::ones([2], (Kind::Float, Device::Cpu))).is_err());
    assert!(!is_meta(&Tensor::ones([2], (Kind::Float, Device::Cpu))));
}

#[test]
fn timestep_features_are_made_on_the_timesteps_device() {
    for (dim, flip, shift) in [(32, true, 0.0), (33, false, 1.0)] {
        let out = tch::no_grad(|| timestep_features(&meta(&Tensor::from_slice(&[1.0f32, 500.0, 999.0])), dim, flip, shift));
        assert_eq!(out.size(), [3, dim]);
        assert!(is_meta(&out), "the features of meta timesteps are not on meta");
    }
}

#[test]
fn sd15_unet_time_embedding_runs_on_the_inputs_device() {
    let refs = References::of("tiny-sd15");
    let unet = meta_unet("tiny-sd15");
    let t = refs.get("unet.timesteps");
    let emb = tch::no_grad(|| unet.embedding(&meta(t), None)).unwrap();
    assert_eq!(emb.size()[0], t.size()[0]);
    assert!(is_meta(&emb));
}

#[test]
fn sdxl_unet_time_and_size_embedding_runs_on_the_inputs_device() {
    let refs = References::of("tiny-sdxl");
    let unet = meta_unet("tiny-sdxl");
    let (text_embeds, time_ids) = (meta(refs.get("unet.text_embeds")), meta(refs.get("unet.time_ids")));
    let added = TextTimeInput { text_embeds: &text_embeds, time_ids: &time_ids };
    let t = refs.get("unet.timesteps");
    let emb = tch::no_grad(|| unet.embedding(&meta(t), Some(&added))).unwrap();
    assert_eq!(emb.size()[0], t.size()[0]);
    assert!(is_meta(&emb));
}

/// What makes a tensor on the host or reads one back inside a forward pass.
const HOST_BOUND: [&str; 5] = ["Device::Cpu", "Tensor::from_slice", ".to_device(", "_value(&", "try_from("];

/// The source files of the denoisers' forward passes (SD UNet and the pixel UNet, LoRA layers)
/// and of SD3's T5 encoder.
const FORWARD_SOURCES: [&str; 16] = [
    "sd/unet_2d_condition.rs",
    "sd/unet_blocks.rs",
    "sd/resnet.rs",
    "sd/attention.rs",
    "sd/transformer_2d.rs",
    "sd/resample.rs",
    "sd/embeddings.rs",
    "sd/t5_encoder.rs",
    "unet/mod.rs",
    "unet/attention.rs",
    "unet/embedding.rs",
    "unet/resample.rs",
    "unet/resnet.rs",
    "unet/config.rs",
    "unet/flops.rs",
    "lora.rs",
];

#[test]
fn denoiser_forward_sources_make_no_host_tensors() {
    // The parts meta cannot run, checked on their source (their tests, after `#[cfg(test)]`,
    // may use the host freely).
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for file in FORWARD_SOURCES {
        let text = std::fs::read_to_string(src.join(file)).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (i, line) in code.lines().enumerate() {
            let code_part = line.split("//").next().unwrap_or_default();
            if let Some(p) = HOST_BOUND.iter().find(|p| code_part.contains(**p)) {
                found.push(format!("{file}:{}: {p}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "host tensors in forward code:\n{}", found.join("\n"));
}
