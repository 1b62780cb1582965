//! Changing resolution between levels: a stride-2 3x3 conv down, nearest x2 then a 3x3 conv up.

use super::resnet::conv3x3;
use tch::{nn, nn::Module, Tensor};

#[derive(Debug)]
pub struct Downsample {
    conv: nn::Conv2D,
}

impl Downsample {
    pub fn new(p: nn::Path, channels: i64) -> Downsample {
        let cfg = nn::ConvConfig { stride: 2, padding: 1, ..Default::default() };
        Downsample { conv: nn::conv2d(p / "conv", channels, channels, 3, cfg) }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.conv.forward(x)
    }
}

#[derive(Debug)]
pub struct Upsample {
    conv: nn::Conv2D,
}

impl Upsample {
    pub fn new(p: nn::Path, channels: i64) -> Upsample {
        Upsample { conv: conv3x3(p / "conv", channels, channels, false) }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (_, _, h, w) = x.size4().expect("feature maps are 4-d");
        x.upsample_nearest2d([h * 2, w * 2], None, None).apply(&self.conv)
    }
}
