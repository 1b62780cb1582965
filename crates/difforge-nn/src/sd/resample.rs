//! diffusers' `Downsample2D` and `Upsample2D` with their convolution (`conv`), as Stable
//! Diffusion uses them.

use super::resnet::conv3x3;
use tch::{nn, Tensor};

#[derive(Debug)]
pub struct Downsample2D {
    conv: nn::Conv2D,
    /// The VAE encoder's downsampler has padding 0 and pads right and bottom by one instead,
    /// which moves the sampling grid by half a pixel against padding 1 on every side.
    pad_right_bottom: bool,
}

impl Downsample2D {
    /// `padding` as in the config (`downsample_padding`; 0 in the VAE encoder).
    pub fn new(p: nn::Path, channels: i64, padding: i64) -> Downsample2D {
        let cfg = nn::ConvConfig { stride: 2, padding, ..Default::default() };
        Downsample2D { conv: nn::conv2d(p / "conv", channels, channels, 3, cfg), pad_right_bottom: padding == 0 }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        if self.pad_right_bottom {
            x.constant_pad_nd([0, 1, 0, 1]).apply(&self.conv)
        } else {
            x.apply(&self.conv)
        }
    }
}

#[derive(Debug)]
pub struct Upsample2D {
    conv: nn::Conv2D,
}

impl Upsample2D {
    pub fn new(p: nn::Path, channels: i64) -> Upsample2D {
        Upsample2D { conv: conv3x3(p / "conv", channels, channels) }
    }

    /// Nearest-neighbour doubling to `size` when given (the UNet passes the skip's size so that
    /// odd latent sizes come back exactly), then the convolution.
    pub fn forward(&self, x: &Tensor, size: Option<(i64, i64)>) -> Tensor {
        let (h, w) = size.unwrap_or_else(|| (x.size()[2] * 2, x.size()[3] * 2));
        x.upsample_nearest2d([h, w], None, None).apply(&self.conv)
    }
}
