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

    /// With LoRA adapters (`<module>.lora_down.weight`, `.lora_up.weight`) when `lora` is given,
    /// on the layers its `targets` name: the transformers' attention projections, their
    /// `proj_in`/`proj_out`, their feed-forward layers, the resnets' 3x3 convolutions.
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

    /// The embedding of timesteps `t` (B,) (and SDXL's added conditioning), which every resnet
    /// adds. Public so that the device tests can run it alone on meta tensors: it is where the
    /// forward pass makes tensors of its own, and libtorch has no meta kernels for the
    /// convolutions, norms and attention of the rest.
    pub fn embedding(&self, t: &Tensor, added: Option<&TextTimeInput>) -> Result<Tensor, NnError> {
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
        self.forward_t(x, t, context, added, false)
    }

    /// [`UNet2DConditionModel::forward`]; `train` turns the adapters' dropout on.
    pub fn forward_t(&self, x: &Tensor, t: &Tensor, context: &Tensor, added: Option<&TextTimeInput>, train: bool) -> Result<Tensor, NnError> {
        let emb = self.embedding(t, added)?.to_kind(x.kind());
        let mut h = x.apply(&self.conv_in);
        let mut skips = vec![h.shallow_clone()];
        for block in &self.down_blocks {
            h = block.forward(&h, &emb, context, &mut skips, train);
        }
        h = self.mid_block.forward(&h, &emb, context, train);
        for block in &self.up_blocks {
            h = block.forward(&h, &emb, context, &mut skips, train);
        }
        Ok(h.apply(&self.conv_norm_out).silu().apply(&self.conv_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::{LoraConfig, LoraTarget};
    use tch::Kind;

    fn tiny_sd15() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd/tiny-sd15/unet")
    }

    fn spec(targets: Vec<LoraTarget>, dropout: f64) -> LoraSpec {
        LoraSpec { config: LoraConfig { rank: 2, alpha: 2.0, dropout, targets, ..Default::default() }, scale: 1.0 }
    }

    /// The adapters' (down) variables of the tiny SD 1.5 UNet built with `targets`, by name.
    fn adapters(targets: Vec<LoraTarget>) -> std::collections::BTreeMap<String, Vec<i64>> {
        let config: UNet2DConditionConfig = read_config(&tiny_sd15()).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        UNet2DConditionModel::with_lora(&vs.root(), &config, Some(&spec(targets, 0.0))).unwrap();
        vs.variables().into_iter().filter(|(n, _)| n.ends_with(".lora_down.weight")).map(|(n, t)| (n, t.size())).collect()
    }

    #[test]
    fn each_target_adapts_its_layers_with_diffusers_names() {
        let count = |targets| adapters(targets).len();
        // 4 transformers (1 down, 1 mid, 2 up), each 2 attentions x 4 projections.
        assert_eq!(count(vec![LoraTarget::Attention]), 32);
        assert_eq!(count(vec![LoraTarget::Projection]), 8, "proj_in and proj_out of 4 transformers");
        assert_eq!(count(vec![LoraTarget::FeedForward]), 8, "ff.net.0.proj and ff.net.2 of 4 transformers");
        assert_eq!(count(vec![LoraTarget::Conv]), 2 * 8, "conv1 and conv2 of 8 resnets (2 down, 2 mid, 4 up)");
        assert_eq!(count(vec![LoraTarget::Embedding]), 0, "the SD UNet's time embedding takes none");
        let all = adapters(vec![LoraTarget::Projection, LoraTarget::FeedForward, LoraTarget::Conv]);
        let t = "down_blocks.1.attentions.0";
        assert_eq!(all[&format!("{t}.proj_in.lora_down.weight")], [2, 8, 1, 1], "a 1x1 conv in SD 1.x");
        assert_eq!(all[&format!("{t}.transformer_blocks.0.ff.net.0.proj.lora_down.weight")], [2, 8]);
        assert_eq!(all[&format!("{t}.transformer_blocks.0.ff.net.2.lora_down.weight")], [2, 32]);
        assert_eq!(all["down_blocks.1.resnets.0.conv1.lora_down.weight"], [2, 4, 3, 3]);
        assert_eq!(all["up_blocks.0.resnets.0.conv2.lora_down.weight"], [2, 8, 3, 3]);
    }

    #[test]
    fn fresh_adapters_change_nothing_and_dropout_acts_in_training_only() {
        let config: UNet2DConditionConfig = read_config(&tiny_sd15()).unwrap();
        let all = vec![LoraTarget::Attention, LoraTarget::Projection, LoraTarget::FeedForward, LoraTarget::Conv];
        let (plain_vs, adapted_vs) = (nn::VarStore::new(Device::Cpu), nn::VarStore::new(Device::Cpu));
        let plain = UNet2DConditionModel::new(&plain_vs.root(), &config).unwrap();
        let adapted = UNet2DConditionModel::with_lora(&adapted_vs.root(), &config, Some(&spec(all, 0.5))).unwrap();
        let base = plain_vs.variables();
        tch::no_grad(|| {
            for (name, mut v) in adapted_vs.variables() {
                match base.get(&name) {
                    Some(b) => v.copy_(b),
                    None => v.copy_(&(v.randn_like() * 0.1)),
                }
            }
        });
        tch::manual_seed(3);
        let x = Tensor::randn([1, 4, 8, 8], (Kind::Float, Device::Cpu));
        let t = Tensor::from_slice(&[10f32]);
        let context = Tensor::randn([1, 5, 32], (Kind::Float, Device::Cpu));
        let run = |unet: &UNet2DConditionModel, train| tch::no_grad(|| unet.forward_t(&x, &t, &context, None, train).unwrap());
        assert!(!run(&adapted, false).equal(&run(&plain, false)), "trained adapters change the output");
        assert!(run(&adapted, false).equal(&run(&adapted, false)), "no dropout outside training");
        assert!(!run(&adapted, true).equal(&run(&adapted, false)), "dropout in training");
        // Up weights zero: the adapted UNet is its base, in training too (the base never drops).
        tch::no_grad(|| {
            for (_, mut v) in adapted_vs.variables().into_iter().filter(|(n, _)| n.ends_with(".lora_up.weight")) {
                let _ = v.zero_();
            }
        });
        assert!(run(&adapted, true).equal(&run(&plain, false)));
    }
}
