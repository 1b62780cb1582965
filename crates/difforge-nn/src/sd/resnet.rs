//! diffusers' `ResnetBlock2D` as Stable Diffusion configures it (`time_embedding_norm =
//! "default"`, output scale 1, SiLU): norm, SiLU, conv; plus the projected time embedding when
//! the block has one (the UNet's; the VAE's blocks have none); norm, SiLU, conv; a 1x1
//! `conv_shortcut` when the channel count changes.

use tch::{nn, nn::Module, Tensor};

#[derive(Debug)]
pub struct ResnetBlock2D {
    norm1: nn::GroupNorm,
    conv1: nn::Conv2D,
    time_emb_proj: Option<nn::Linear>,
    norm2: nn::GroupNorm,
    conv2: nn::Conv2D,
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
        ResnetBlock2D {
            norm1: group_norm(p / "norm1", s.groups, s.cin, s.eps),
            conv1: conv3x3(p / "conv1", s.cin, s.cout),
            time_emb_proj: s.temb.map(|t| nn::linear(p / "time_emb_proj", t, s.cout, Default::default())),
            norm2: group_norm(p / "norm2", s.groups, s.cout, s.eps),
            conv2: conv3x3(p / "conv2", s.cout, s.cout),
            conv_shortcut: (s.cin != s.cout).then(|| nn::conv2d(p / "conv_shortcut", s.cin, s.cout, 1, Default::default())),
        }
    }

    /// `temb` is the UNet's time embedding (B, temb); None in the VAE.
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Tensor {
        let mut h = x.apply(&self.norm1).silu().apply(&self.conv1);
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb) {
            h += t.silu().apply(proj).unsqueeze(-1).unsqueeze(-1);
        }
        let h = h.apply(&self.norm2).silu().apply(&self.conv2);
        match &self.conv_shortcut {
            Some(c) => c.forward(x) + h,
            None => x + h,
        }
    }
}
