//! The VAE's halves as diffusers' `Encoder` and `Decoder` (`models/autoencoders/vae.py`) build
//! them for `AutoencoderKL`: `DownEncoderBlock2D` / `UpDecoderBlock2D` levels on either side of
//! a `UNetMidBlock2D` (resnet, single-head spatial attention, resnet), then GroupNorm, SiLU and
//! a 3x3 convolution out.

use super::attention::Attention;
use super::resample::{Downsample2D, Upsample2D};
use super::resnet::{conv3x3, group_norm, ResnetBlock2D, ResnetShape};
use tch::{nn, Tensor};

/// diffusers fixes every VAE norm's epsilon at 1e-6 whatever the config says, so it is no
/// config field here either.
pub const VAE_EPS: f64 = 1e-6;

/// What the encoder and decoder take from the config (validated by the caller).
#[derive(Debug, Clone)]
pub(crate) struct VaeShape {
    pub(crate) block_out_channels: Vec<i64>,
    pub(crate) layers_per_block: i64,
    pub(crate) groups: i64,
    pub(crate) mid_block_attention: bool,
}

fn resnets(p: &nn::Path, count: i64, cin: i64, cout: i64, groups: i64) -> Vec<ResnetBlock2D> {
    (0..count)
        .map(|j| {
            let cin = if j == 0 { cin } else { cout };
            ResnetBlock2D::new(&(p / "resnets" / j), ResnetShape { cin, cout, temb: None, groups, eps: VAE_EPS })
        })
        .collect()
}

/// `UNetMidBlock2D` with one attention layer: diffusers names its resnets 0 and 1 around
/// `attentions.0`, and keeps resnet 1 when `mid_block_add_attention` drops the attention.
#[derive(Debug)]
struct MidBlock {
    resnets: Vec<ResnetBlock2D>,
    attention: Option<Attention>,
}

impl MidBlock {
    fn new(p: nn::Path, channels: i64, s: &VaeShape) -> MidBlock {
        let attention = s.mid_block_attention.then(|| Attention::spatial(&(&p / "attentions" / "0"), channels, s.groups, VAE_EPS));
        MidBlock { resnets: resnets(&p, 2, channels, channels, s.groups), attention }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = x.shallow_clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            if let (1, Some(attention)) = (i, &self.attention) {
                h = attention.forward_spatial(&h);
            }
            h = resnet.forward(&h, None);
        }
        h
    }
}

#[derive(Debug)]
struct Level<R> {
    resnets: Vec<ResnetBlock2D>,
    resample: Option<R>,
}

#[derive(Debug)]
pub struct Encoder {
    conv_in: nn::Conv2D,
    down_blocks: Vec<Level<Downsample2D>>,
    mid_block: MidBlock,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl Encoder {
    /// Images with `cin` channels to `cout` channels: the latent distribution's mean and log
    /// variance stacked (`double_z`), so twice the latent channels.
    pub(crate) fn new(p: nn::Path, cin: i64, cout: i64, s: &VaeShape) -> Encoder {
        let channels = &s.block_out_channels;
        let last = channels.len() - 1;
        let mut down_blocks = Vec::new();
        let mut width = channels[0];
        for (i, &out) in channels.iter().enumerate() {
            let block = &p / "down_blocks" / i;
            // Padding 0: diffusers' VAE downsampler pads right and bottom only.
            let resample = (i != last).then(|| Downsample2D::new(&block / "downsamplers" / "0", out, 0));
            down_blocks.push(Level { resnets: resnets(&block, s.layers_per_block, width, out, s.groups), resample });
            width = out;
        }
        Encoder {
            conv_in: conv3x3(&p / "conv_in", cin, channels[0]),
            down_blocks,
            mid_block: MidBlock::new(&p / "mid_block", width, s),
            conv_norm_out: group_norm(&p / "conv_norm_out", s.groups, width, VAE_EPS),
            conv_out: conv3x3(&p / "conv_out", width, cout),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = x.apply(&self.conv_in);
        for level in &self.down_blocks {
            for resnet in &level.resnets {
                h = resnet.forward(&h, None);
            }
            if let Some(down) = &level.resample {
                h = down.forward(&h);
            }
        }
        self.mid_block.forward(&h).apply(&self.conv_norm_out).silu().apply(&self.conv_out)
    }
}

#[derive(Debug)]
pub struct Decoder {
    conv_in: nn::Conv2D,
    mid_block: MidBlock,
    up_blocks: Vec<Level<Upsample2D>>,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl Decoder {
    /// Latents with `cin` channels to images with `cout`; the levels run over the channels in
    /// reverse, each with one resnet more than the encoder's.
    pub(crate) fn new(p: nn::Path, cin: i64, cout: i64, s: &VaeShape) -> Decoder {
        let reversed: Vec<i64> = s.block_out_channels.iter().rev().copied().collect();
        let last = reversed.len() - 1;
        let mut up_blocks = Vec::new();
        let mut width = reversed[0];
        for (i, &out) in reversed.iter().enumerate() {
            let block = &p / "up_blocks" / i;
            let resample = (i != last).then(|| Upsample2D::new(&block / "upsamplers" / "0", out));
            up_blocks.push(Level { resnets: resnets(&block, s.layers_per_block + 1, width, out, s.groups), resample });
            width = out;
        }
        Decoder {
            conv_in: conv3x3(&p / "conv_in", cin, reversed[0]),
            mid_block: MidBlock::new(&p / "mid_block", reversed[0], s),
            up_blocks,
            conv_norm_out: group_norm(&p / "conv_norm_out", s.groups, width, VAE_EPS),
            conv_out: conv3x3(&p / "conv_out", width, cout),
        }
    }

    pub(crate) fn conv_in_weight(&self) -> &Tensor {
        &self.conv_in.ws
    }

    pub fn forward(&self, z: &Tensor) -> Tensor {
        let mut h = self.mid_block.forward(&z.apply(&self.conv_in));
        for level in &self.up_blocks {
            for resnet in &level.resnets {
                h = resnet.forward(&h, None);
            }
            if let Some(up) = &level.resample {
                h = up.forward(&h, None);
            }
        }
        h.apply(&self.conv_norm_out).silu().apply(&self.conv_out)
    }
}
