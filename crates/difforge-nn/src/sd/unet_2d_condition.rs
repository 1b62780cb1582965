//! diffusers' `UNet2DConditionModel` for SD 1.x, SD 2.x and SDXL: time embedding (plus SDXL's
//! `text_time` embedding of the pooled text and the size/crop ids), `conv_in`, down blocks,
//! the cross-attention mid block, up blocks with skip connections, GroupNorm, SiLU, `conv_out`.

use super::embeddings::{timestep_features, TimestepEmbedding};
use super::load::{load_component, read_config};
use super::resnet::{conv3x3, group_norm};
use super::unet_blocks::{BlockContext, DownBlock, MidBlock, UpBlock, UpChannels};
use super::unet_config::{TextTimeShape, UNet2DConditionConfig};
use crate::error::NnError;
use crate::lora::LoraSpec;
use std::path::Path;
use tch::{nn, Device, Tensor};

/// SDXL's added conditioning for a batch: the pooled text embedding (B, D) and the six
/// size/crop ids (B, 6): original size, crop top-left, target size.
#[derive(Debug)]
pub struct TextTimeInput<'a> {
    pub text_embeds: &'a Tensor,
    pub time_ids: &'a Tensor,
}

#[derive(Debug)]
struct TextTimeEmbedding {
    shape: TextTimeShape,
    add_embedding: TimestepEmbedding,
}

#[derive(Debug)]
pub struct UNet2DConditionModel {
    config: UNet2DConditionConfig,
    time_embedding: TimestepEmbedding,
    text_time: Option<TextTimeEmbedding>,
    conv_in: nn::Conv2D,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl UNet2DConditionModel {
    /// Builds the network under `p` (variables named as diffusers names them) from `config`.
    pub fn new(p: &nn::Path, config: &UNet2DConditionConfig) -> Result<UNet2DConditionModel, NnError> {
        UNet2DConditionModel::with_lora(p, config, None)
    }

    /// With LoRA adapters (`<module>.lora_down.weight`, `.lora_up.weight`) on every attention
    /// projection of its transformers when `lora` is given.
    pub fn with_lora(p: &nn::Path, config: &UNet2DConditionConfig, lora: Option<&LoraSpec>) -> Result<UNet2DConditionModel, NnError> {
        let levels = config.levels()?;
        let c0 = levels[0].channels;
        let temb = 4 * c0;
        let ctx =
            BlockContext { temb, groups: config.norm_num_groups, eps: config.norm_eps, linear_projection: config.use_linear_projection, lora: lora.cloned() };
        let text_time =
            config.text_time()?.map(|shape| TextTimeEmbedding { shape, add_embedding: TimestepEmbedding::new(&(p / "add_embedding"), shape.input_dim, temb) });
        let last = levels.len() - 1;
        let mut cin = c0;
        let mut down_blocks = Vec::new();
        for (i, level) in levels.iter().enumerate() {
            let padding = (i < last).then_some(config.downsample_padding);
            down_blocks.push(DownBlock::new(&(p / "down_blocks" / i), &ctx, level, cin, padding));
            cin = level.channels;
        }
        let mut up_blocks = Vec::new();
        let mut prev = levels[last].channels;
        for (i, level) in levels.iter().rev().enumerate() {
            let below = &levels[(last - i).saturating_sub(1)];
            let ch = UpChannels { prev, skip_last: below.channels };
            up_blocks.push(UpBlock::new(&(p / "up_blocks" / i), &ctx, level, ch, i < last));
            prev = level.channels;
        }
        Ok(UNet2DConditionModel {
            config: config.clone(),
            time_embedding: TimestepEmbedding::new(&(p / "time_embedding"), c0, temb),
            text_time,
            conv_in: conv3x3(p / "conv_in", config.in_channels, c0),
            down_blocks,
            mid_block: MidBlock::new(&(p / "mid_block"), &ctx, &levels[last]),
            up_blocks,
            conv_norm_out: group_norm(p / "conv_norm_out", config.norm_num_groups, c0, config.norm_eps),
            conv_out: conv3x3(p / "conv_out", c0, config.out_channels),
        })
    }

    /// Reads a diffusers `unet/` folder: `config.json` and the weights (`variant` picks
    /// `diffusion_pytorch_model.<variant>.safetensors`).
    pub fn load(dir: &Path, variant: Option<&str>, device: Device) -> Result<(nn::VarStore, UNet2DConditionModel), NnError> {
        let config: UNet2DConditionConfig = read_config(dir)?;
        let vs = nn::VarStore::new(device);
        let unet = UNet2DConditionModel::new(&vs.root(), &config).map_err(|e| NnError::Load { path: dir.join("config.json"), reason: e.to_string() })?;
        load_component(&vs, dir, "diffusion_pytorch_model", variant)?;
        Ok((vs, unet))
    }

    pub fn config(&self) -> &UNet2DConditionConfig {
        &self.config
    }

    /// The embedding of timesteps `t` (B,) (and SDXL's added conditioning), which every resnet adds.
    fn embedding(&self, t: &Tensor, added: Option<&TextTimeInput>) -> Result<Tensor, NnError> {
        let c0 = self.config.block_out_channels[0];
        let features = timestep_features(t, c0, self.config.flip_sin_to_cos, self.config.freq_shift);
        let emb = self.time_embedding.forward(&features);
        match (&self.text_time, added) {
            (None, None) => Ok(emb),
            (Some(tt), Some(input)) => {
                let b = input.text_embeds.size()[0];
                let ids = timestep_features(&input.time_ids.flatten(0, -1), tt.shape.time_embed_dim, self.config.flip_sin_to_cos, self.config.freq_shift);
                let joined = Tensor::cat(&[input.text_embeds.to_kind(ids.kind()), ids.reshape([b, -1])], -1);
                if joined.size()[1] != tt.shape.input_dim {
                    return Err(NnError::Invalid(format!("SDXL conditioning has {} features, the UNet expects {}", joined.size()[1], tt.shape.input_dim)));
                }
                Ok(emb + tt.add_embedding.forward(&joined))
            }
            (Some(_), None) => Err(NnError::Invalid("this UNet (addition_embed_type \"text_time\") needs the pooled text embedding and time ids".into())),
            (None, Some(_)) => Err(NnError::Invalid("this UNet has no addition_embed_type, so it takes no pooled text embedding or time ids".into())),
        }
    }

    /// The prediction for latents `x` (B, C, H, W) at timesteps `t` (B,) given the text encoder's
    /// hidden states `context` (B, tokens, cross_attention_dim).
    pub fn forward(&self, x: &Tensor, t: &Tensor, context: &Tensor, added: Option<&TextTimeInput>) -> Result<Tensor, NnError> {
        let emb = self.embedding(t, added)?.to_kind(x.kind());
        let mut h = x.apply(&self.conv_in);
        let mut skips = vec![h.shallow_clone()];
        for block in &self.down_blocks {
            h = block.forward(&h, &emb, context, &mut skips);
        }
        h = self.mid_block.forward(&h, &emb, context);
        for block in &self.up_blocks {
            h = block.forward(&h, &emb, context, &mut skips);
        }
        Ok(h.apply(&self.conv_norm_out).silu().apply(&self.conv_out))
    }
}
