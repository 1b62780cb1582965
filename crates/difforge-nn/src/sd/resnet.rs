//! diffusers' `ResnetBlock2D` as Stable Diffusion configures it (`time_embedding_norm =
//! "default"`, output scale 1, SiLU): norm, SiLU, conv; plus the projected time embedding when
//! the block has one (the UNet's; the VAE's blocks have none); norm, SiLU, conv; a 1x1
//! `conv_shortcut` when the channel count changes. conv1 and conv2 can carry LoRA adapters
//! (LoCon: a 3x3 conv down to the rank, a 1x1 conv up).

use crate::lora::{self, LoraSpec};
use tch::{nn, nn::Module, Tensor};

#[derive(Debug)]
pub struct ResnetBlock2D {
    norm1: nn::GroupNorm,
    conv1: lora::Conv,
    time_emb_proj: Option<nn::Linear>,
    norm2: nn::GroupNorm,
    conv2: lora::Conv,
    conv_shortcut: Option<nn::Conv2D>,
}

/// Shape of one block: channels in and out, the time embedding's width (None in the VAE),
/// GroupNorm's groups and epsilon.
#[derive(Debug, Clone, Copy)]
pub struct ResnetShape {
    pub cin: i64,
    pub cout: i64,
    pub temb: Option<i64>,
    pub groups: i64,
    pub eps: f64,
}

pub(crate) fn conv3x3(p: nn::Path, cin: i64, cout: i64) -> nn::Conv2D {
    nn::conv2d(p, cin, cout, 3, nn::ConvConfig { padding: 1, ..Default::default() })
}

pub(crate) fn group_norm(p: nn::Path, groups: i64, channels: i64, eps: f64) -> nn::GroupNorm {
    nn::group_norm(p, groups, channels, nn::GroupNormConfig { eps, ..Default::default() })
}

impl ResnetBlock2D {
    pub fn new(p: &nn::Path, s: ResnetShape) -> ResnetBlock2D {
        ResnetBlock2D::with_lora(p, s, None)
    }

    /// With LoRA adapters on conv1 and conv2 when `lora` is given.
    pub fn with_lora(p: &nn::Path, s: ResnetShape, lora: Option<&LoraSpec>) -> ResnetBlock2D {
        let conv = |name: &str, cin| lora::Conv::new(p / name, cin, s.cout, 3, nn::ConvConfig { padding: 1, ..Default::default() }, lora);
        ResnetBlock2D {
            norm1: group_norm(p / "norm1", s.groups, s.cin, s.eps),
            conv1: conv("conv1", s.cin),
            time_emb_proj: s.temb.map(|t| nn::linear(p / "time_emb_proj", t, s.cout, Default::default())),
            norm2: group_norm(p / "norm2", s.groups, s.cout, s.eps),
            conv2: conv("conv2", s.cout),
            conv_shortcut: (s.cin != s.cout).then(|| nn::conv2d(p / "conv_shortcut", s.cin, s.cout, 1, Default::default())),
        }
    }

    /// `temb` is the UNet's time embedding (B, temb); None in the VAE.
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Tensor {
        self.forward_t(x, temb, false)
    }

    /// [`ResnetBlock2D::forward`]; `train` turns the adapters' dropout on.
    pub fn forward_t(&self, x: &Tensor, temb: Option<&Tensor>, train: bool) -> Tensor {
        let mut h = self.conv1.forward(&x.apply(&self.norm1).silu(), train);
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb) {
            h += t.silu().apply(proj).unsqueeze(-1).unsqueeze(-1);
        }
        let h = self.conv2.forward(&h.apply(&self.norm2).silu(), train);
        match &self.conv_shortcut {
            Some(c) => c.forward(x) + h,
            None => x + h,
        }
    }
}
