//! diffusers' UNet2DConditionModel as a denoising network of the family seam: text
//! conditioning in (the encoder's hidden states, and for SDXL the pooled embedding and size ids),
//! prediction out; or, when the text encoder trains with it, token ids in (`SdTextUnet`).

use difforge_nn::sd::unet_2d_condition::{TextTimeInput, UNet2DConditionModel};
use difforge_nn::sd::ClipTextModel;
use difforge_nn::{Conditioning, DenoiserNet, TextConditioning};
use tch::{Kind, Tensor};

/// Where the text encoder's variables live in a network that trains it: beside the UNet's
/// (which keep diffusers' names at the root), under transformers' names.
pub const TEXT_ENCODER_PREFIX: &str = "text_encoder.";

#[derive(Debug)]
pub struct SdUnet(pub UNet2DConditionModel);

impl DenoiserNet for SdUnet {
    fn forward(&self, x: &Tensor, t: &Tensor, cond: &Conditioning, train: bool) -> Tensor {
        predict_t(&self.0, x, t, cond, train)
    }
}

/// The UNet's prediction for `cond`, which must be text conditioning of the shape its config
/// takes: the family and the pipeline build every conditioning they pass (from the encoders
/// loaded with the UNet), so anything else is a bug, not user input.
pub(crate) fn predict(unet: &UNet2DConditionModel, x: &Tensor, t: &Tensor, cond: &Conditioning) -> Tensor {
    predict_t(unet, x, t, cond, false)
}

/// [`predict`]; `train` turns the adapters' dropout on.
fn predict_t(unet: &UNet2DConditionModel, x: &Tensor, t: &Tensor, cond: &Conditioning, train: bool) -> Tensor {
    let Conditioning::Text(text) = cond else { unreachable!("a Stable Diffusion UNet is conditioned on text, got {cond:?}") };
    let added = match (&text.pooled, &text.time_ids) {
        (Some(text_embeds), Some(time_ids)) => Some(TextTimeInput { text_embeds, time_ids }),
        _ => None,
    };
    let out = unet.forward_t(x, &t.to_kind(Kind::Float), &text.hidden, added.as_ref(), train);
    out.expect("the conditioning is built for this UNet")
}

/// A CLIP text encoder and the UNet that cross-attends to it, trained together: conditioned on
/// token ids, so that gradients reach the encoder.
#[derive(Debug)]
pub struct SdTextUnet {
    pub text: ClipTextModel,
    pub unet: UNet2DConditionModel,
    pub clip_skip: usize,
}

impl SdTextUnet {
    /// The encoder's hidden states for token ids, as the UNet takes them; `train` turns the
    /// text adapters' dropout on.
    fn encode(&self, ids: &Tensor, train: bool) -> Conditioning {
        let out = self.text.forward_t(ids, train).expect("the family's tokenizer gives ids the encoder takes");
        let hidden = self.text.clip_skip(&out, self.clip_skip).expect("clip_skip is checked against the encoder at load");
        Conditioning::Text(TextConditioning { hidden, mask: None, pooled: None, time_ids: None })
    }
}

impl DenoiserNet for SdTextUnet {
    /// Token ids (training: gradients reach the encoder), or the hidden states `prepare` made
    /// from them (sampling: encoded once, not at every step).
    fn forward(&self, x: &Tensor, t: &Tensor, cond: &Conditioning, train: bool) -> Tensor {
        match cond {
            Conditioning::Tokens(ids) => predict_t(&self.unet, x, t, &self.encode(ids, train), train),
            prepared => predict_t(&self.unet, x, t, prepared, train),
        }
    }

    fn prepare(&self, cond: &Conditioning) -> Option<Conditioning> {
        match cond {
            Conditioning::Tokens(ids) => Some(self.encode(ids, false)),
            _ => None,
        }
    }
}
