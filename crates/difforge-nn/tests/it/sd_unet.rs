//! UNet2DConditionModel against diffusers 0.35.2 on the tiny SD 1.x, SD 2.x and SDXL fixtures
//! (tools/make_sd_fixtures.py): one forward pass each, same weights, same inputs.

use crate::sd_reference::{assert_close, fixture, References};
use difforge_nn::sd::unet_2d_condition::{TextTimeInput, UNet2DConditionModel};
use tch::Device;

fn forward_matches(name: &str) {
    let refs = References::of(name);
    let (_vs, unet) = UNet2DConditionModel::load(&fixture(name).join("unet"), None, Device::Cpu).unwrap();
    let added =
        refs.0.contains_key("unet.text_embeds").then(|| TextTimeInput { text_embeds: refs.get("unet.text_embeds"), time_ids: refs.get("unet.time_ids") });
    let out =
        tch::no_grad(|| unet.forward(refs.get("unet.sample"), refs.get("unet.timesteps"), refs.get("unet.encoder_hidden_states"), added.as_ref())).unwrap();
    assert_close(&format!("{name} UNet output"), &out, refs.get("unet.output"));
}

#[test]
fn sd15_unet_matches_diffusers() {
    forward_matches("tiny-sd15");
}

#[test]
fn sd21_unet_with_linear_projections_and_per_level_heads_matches_diffusers() {
    forward_matches("tiny-sd21");
}

#[test]
fn sdxl_unet_with_text_time_conditioning_matches_diffusers() {
    forward_matches("tiny-sdxl");
}

#[test]
fn sdxl_unet_without_its_added_conditioning_is_refused() {
    let refs = References::of("tiny-sdxl");
    let (_vs, unet) = UNet2DConditionModel::load(&fixture("tiny-sdxl").join("unet"), None, Device::Cpu).unwrap();
    let err = tch::no_grad(|| unet.forward(refs.get("unet.sample"), refs.get("unet.timesteps"), refs.get("unet.encoder_hidden_states"), None)).unwrap_err();
    assert!(err.to_string().contains("needs the pooled text embedding"), "{err}");
}
