//! The frozen text side of the Stable Diffusion family: the tokenizer(s) and CLIP text
//! encoder(s) that turn captions into the UNet's conditioning, as diffusers' pipelines build it.
//! SD 1.x and 2.x: one encoder's last hidden state (with `clip_skip`, an earlier layer through
//! the final norm). SDXL: both encoders' penultimate hidden states side by side, the second's
//! pooled projection, and the size/crop ids of an uncropped image of the training size.

use crate::error::ModelError;
use crate::stable_diffusion::components::has_second_text_encoder;
use difforge_nn::sd::tokenizer::ClipTokenizer;
use difforge_nn::sd::ClipTextModel;
use difforge_nn::TextConditioning;
use std::path::Path;
use tch::{Device, Tensor};

pub struct TextEncoders {
    /// `tokenizer/` + `text_encoder/` (and for SDXL `tokenizer_2/` + `text_encoder_2/`).
    encoders: Vec<(ClipTokenizer, ClipTextModel)>,
    clip_skip: usize,
    /// The training images' side, for SDXL's size ids.
    size: i64,
}

impl TextEncoders {
    pub fn load(base: &Path, clip_skip: usize, size: i64, device: Device) -> Result<TextEncoders, ModelError> {
        let folders: &[(&str, &str)] =
            if has_second_text_encoder(base)? { &[("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")] } else { &[("tokenizer", "text_encoder")] };
        let mut encoders = Vec::with_capacity(folders.len());
        for (tokenizer, encoder) in folders {
            encoders.push((ClipTokenizer::load(base.join(tokenizer))?, ClipTextModel::load(&base.join(encoder), device)?));
        }
        Ok(TextEncoders { encoders, clip_skip, size })
    }

    pub fn is_xl(&self) -> bool {
        self.encoders.len() == 2
    }

    /// The conditioning of `texts` on `device` (no gradients: the encoders are frozen).
    pub fn encode(&self, texts: &[&str], device: Device) -> Result<TextConditioning, ModelError> {
        tch::no_grad(|| {
            let mut hidden = Vec::with_capacity(self.encoders.len());
            let mut pooled = None;
            for (tokenizer, encoder) in &self.encoders {
                let out = encoder.forward(&tokenizer.encode_batch(texts)?)?;
                if self.is_xl() {
                    // SDXL takes the penultimate layer as it is, without the final norm.
                    let n = out.hidden_states.len();
                    let layer = n
                        .checked_sub(2 + self.clip_skip)
                        .ok_or_else(|| ModelError::Other(format!("clip_skip {} is too large for this text encoder", self.clip_skip)))?;
                    hidden.push(out.hidden_states[layer].shallow_clone());
                    pooled = Some(out.pooled);
                } else {
                    hidden.push(encoder.clip_skip(&out, self.clip_skip)?);
                }
            }
            let b = texts.len() as i64;
            let s = self.size as f32;
            let time_ids = self.is_xl().then(|| Tensor::from_slice(&[s, s, 0.0, 0.0, s, s]).unsqueeze(0).repeat([b, 1]).to_device(device));
            Ok(TextConditioning { hidden: Tensor::cat(&hidden, -1).to_device(device), mask: None, pooled: pooled.map(|p| p.to_device(device)), time_ids })
        })
    }
}
