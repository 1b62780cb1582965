//! diffusers' UNet2DConditionModel as a denoising network of the family seam: text
//! conditioning in (the encoder's hidden states, and for SDXL the pooled embedding and size ids),
//! prediction out.

use difforge_nn::sd::unet_2d_condition::{TextTimeInput, UNet2DConditionModel};
use difforge_nn::{Conditioning, DenoiserNet};
use tch::{Kind, Tensor};

#[derive(Debug)]
pub struct SdUnet(pub UNet2DConditionModel);

impl DenoiserNet for SdUnet {
    fn forward(&self, x: &Tensor, t: &Tensor, cond: &Conditioning, _train: bool) -> Tensor {
        predict(&self.0, x, t, cond)
    }
}

/// The UNet's prediction for `cond`, which must be text conditioning of the shape its config
/// takes: the family and the pipeline build every conditioning they pass (from the encoders
/// loaded with the UNet), so anything else is a bug, not user input.
pub(crate) fn predict(unet: &UNet2DConditionModel, x: &Tensor, t: &Tensor, cond: &Conditioning) -> Tensor {
    let Conditioning::Text(text) = cond else { unreachable!("a Stable Diffusion UNet is conditioned on text, got {cond:?}") };
    let added = match (&text.pooled, &text.time_ids) {
        (Some(text_embeds), Some(time_ids)) => Some(TextTimeInput { text_embeds, time_ids }),
        _ => None,
    };
    let out = unet.forward(x, &t.to_kind(Kind::Float), &text.hidden, added.as_ref());
    out.expect("the conditioning is built for this UNet")
}
