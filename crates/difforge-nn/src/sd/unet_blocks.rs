//! The UNet's blocks, each covering diffusers' plain and cross-attention variants
//! (`DownBlock2D` / `CrossAttnDownBlock2D`, `UpBlock2D` / `CrossAttnUpBlock2D`; the two differ
//! only in the transformer after each resnet) and `UNetMidBlock2DCrossAttn`.

use super::resample::{Downsample2D, Upsample2D};
use super::resnet::{ResnetBlock2D, ResnetShape};
use super::transformer_2d::{Transformer2DModel, TransformerShape};
use super::unet_config::Level;
use crate::lora::{LoraSpec, LoraTarget};
use tch::{nn, Tensor};

/// What every block of one UNet shares.
#[derive(Debug, Clone)]
pub struct BlockContext {
    pub temb: i64,
    pub groups: i64,
    pub eps: f64,
    pub linear_projection: bool,
    /// LoRA adapters, on the layers its `targets` name.
    pub lora: Option<LoraSpec>,
}

impl BlockContext {
    fn resnet(&self, p: nn::Path, cin: i64, cout: i64) -> ResnetBlock2D {
        let shape = ResnetShape { cin, cout, temb: Some(self.temb), groups: self.groups, eps: self.eps };
        ResnetBlock2D::with_lora(&p, shape, LoraSpec::targeting(self.lora.as_ref(), LoraTarget::Conv))
    }

    fn transformer(&self, p: nn::Path, level: &Level) -> Transformer2DModel {
        let shape = TransformerShape {
            channels: level.channels,
            heads: level.heads,
            layers: level.transformer_layers,
            context_dim: level.context_dim,
            groups: self.groups,
            linear_projection: self.linear_projection,
        };
        Transformer2DModel::new(&p, &shape, self.lora.as_ref())
    }
}

/// A resnet and, in cross-attention blocks, the transformer after it.
#[derive(Debug)]
struct Layer {
    resnet: ResnetBlock2D,
    attention: Option<Transformer2DModel>,
}

impl Layer {
    fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor, train: bool) -> Tensor {
        let h = self.resnet.forward_t(x, Some(temb), train);
        match &self.attention {
            Some(a) => a.forward(&h, context, train),
            None => h,
        }
    }
}

fn layer(p: &nn::Path, i: i64, ctx: &BlockContext, level: &Level, cin: i64) -> Layer {
    Layer { resnet: ctx.resnet(p / "resnets" / i, cin, level.channels), attention: level.down_attention.then(|| ctx.transformer(p / "attentions" / i, level)) }
}

#[derive(Debug)]
pub struct DownBlock {
    layers: Vec<Layer>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock {
    pub fn new(p: &nn::Path, ctx: &BlockContext, level: &Level, cin: i64, downsample_padding: Option<i64>) -> DownBlock {
        DownBlock {
            layers: (0..level.layers).map(|i| layer(p, i, ctx, level, if i == 0 { cin } else { level.channels })).collect(),
            downsampler: downsample_padding.map(|pad| Downsample2D::new(p / "downsamplers" / "0", level.channels, pad)),
        }
    }

    /// The block's output and every intermediate the up path takes as a skip connection;
    /// `train` turns the adapters' dropout on.
    pub fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor, skips: &mut Vec<Tensor>, train: bool) -> Tensor {
        let mut h = x.shallow_clone();
        for layer in &self.layers {
            h = layer.forward(&h, temb, context, train);
            skips.push(h.shallow_clone());
        }
        if let Some(down) = &self.downsampler {
            h = down.forward(&h);
            skips.push(h.shallow_clone());
        }
        h
    }
}

#[derive(Debug)]
pub struct MidBlock {
    first: ResnetBlock2D,
    then: Vec<(Transformer2DModel, ResnetBlock2D)>,
}

impl MidBlock {
    pub fn new(p: &nn::Path, ctx: &BlockContext, level: &Level) -> MidBlock {
        let c = level.channels;
        MidBlock { first: ctx.resnet(p / "resnets" / 0, c, c), then: vec![(ctx.transformer(p / "attentions" / 0, level), ctx.resnet(p / "resnets" / 1, c, c))] }
    }

    pub fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor, train: bool) -> Tensor {
        let mut h = self.first.forward_t(x, Some(temb), train);
        for (attention, resnet) in &self.then {
            h = resnet.forward_t(&attention.forward(&h, context, train), Some(temb), train);
        }
        h
    }
}

#[derive(Debug)]
pub struct UpBlock {
    layers: Vec<Layer>,
    upsampler: Option<Upsample2D>,
}

/// Channels around one up block: what comes from below (`prev`), and the skip widths: the
/// level's own and, for its last resnet, the level below's (`skip_last`).
#[derive(Debug, Clone, Copy)]
pub struct UpChannels {
    pub prev: i64,
    pub skip_last: i64,
}

impl UpBlock {
    pub fn new(p: &nn::Path, ctx: &BlockContext, level: &Level, ch: UpChannels, upsample: bool) -> UpBlock {
        let n = level.layers + 1;
        let layers = (0..n)
            .map(|i| {
                let skip = if i == n - 1 { ch.skip_last } else { level.channels };
                let from_below = if i == 0 { ch.prev } else { level.channels };
                layer(p, i, ctx, level, from_below + skip)
            })
            .collect();
        UpBlock { layers, upsampler: upsample.then(|| Upsample2D::new(p / "upsamplers" / "0", level.channels)) }
    }

    /// Takes its skips from the end of `skips`; `upsample_size` is the next skip's size.
    pub fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor, skips: &mut Vec<Tensor>, train: bool) -> Tensor {
        let mut h = x.shallow_clone();
        for layer in &self.layers {
            let skip = skips.pop().expect("the down path leaves one skip per up-block layer");
            h = layer.forward(&Tensor::cat(&[h, skip], 1), temb, context, train);
        }
        match (&self.upsampler, skips.last()) {
            (Some(up), Some(next)) => up.forward(&h, Some((next.size()[2], next.size()[3]))),
            _ => h,
        }
    }
}
