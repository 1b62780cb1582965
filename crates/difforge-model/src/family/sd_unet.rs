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
        // The family builds every conditioning of this network (`encode`, `training_conditioning`,
        // `fixed_conditioning`), always as text of the encoder it loaded with the UNet.
        let Conditioning::Text(text) = cond else { unreachable!("a Stable Diffusion UNet is conditioned on text, got {cond:?}") };
        let added = match (&text.pooled, &text.time_ids) {
            (Some(text_embeds), Some(time_ids)) => Some(TextTimeInput { text_embeds, time_ids }),
            _ => None,
        };
        let out = self.0.forward(x, &t.to_kind(Kind::Float), &text.hidden, added.as_ref());
        out.expect("the family passes the conditioning its UNet takes")
    }
}
