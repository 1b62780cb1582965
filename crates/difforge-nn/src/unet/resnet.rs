//! The residual block: GroupNorm, activation, 3x3 conv; the embedding modulates the second
//! norm as scale and shift (as in ADM); the second conv starts at zero so that each block starts
//! as the identity, which speeds up early training.

use crate::activation::Activation;
use crate::lora::{self, LoraSpec, LoraTarget};
use tch::{nn, nn::Module, Tensor};

/// What every residual block of a network shares.
#[derive(Debug, Clone, Copy)]
pub struct BlockOptions {
    pub groups: i64,
    pub activation: Activation,
    pub dropout: f64,
    pub scale_shift: bool,
}

#[derive(Debug)]
pub struct ResBlock {
    norm1: nn::GroupNorm,
    conv1: lora::Conv,
    emb_proj: nn::Linear,
    norm2: nn::GroupNorm,
    conv2: lora::Conv,
    skip: Option<nn::Conv2D>,
    activation: Activation,
    dropout: f64,
    out_channels: i64,
    scale_shift: bool,
}

fn conv3x3_config(zero: bool) -> nn::ConvConfig {
    let mut cfg = nn::ConvConfig { padding: 1, ..Default::default() };
    if zero {
        cfg.ws_init = nn::Init::Const(0.0);
    }
    cfg
}

pub(crate) fn conv3x3(p: nn::Path, cin: i64, cout: i64, zero: bool) -> nn::Conv2D {
    nn::conv2d(p, cin, cout, 3, conv3x3_config(zero))
}

impl ResBlock {
    pub fn new(p: &nn::Path, cin: i64, cout: i64, emb_dim: i64, opts: &BlockOptions, lora: Option<&LoraSpec>) -> ResBlock {
        let BlockOptions { groups, activation, dropout, scale_shift } = *opts;
        let lora = lora.filter(|l| l.wants(LoraTarget::Conv));
        let emb_out = if scale_shift { 2 * cout } else { cout };
        ResBlock {
            norm1: nn::group_norm(p / "norm1", groups, cin, Default::default()),
            conv1: lora::Conv::new(p / "conv1", cin, cout, 3, conv3x3_config(false), lora),
            emb_proj: nn::linear(p / "emb_proj", emb_dim, emb_out, Default::default()),
            norm2: nn::group_norm(p / "norm2", groups, cout, Default::default()),
            conv2: lora::Conv::new(p / "conv2", cout, cout, 3, conv3x3_config(true), lora),
            skip: (cin != cout).then(|| nn::conv2d(p / "skip", cin, cout, 1, Default::default())),
            activation,
            dropout,
            out_channels: cout,
            scale_shift,
        }
    }

    pub fn forward(&self, x: &Tensor, emb: &Tensor, train: bool) -> Tensor {
        let h = self.conv1.forward(&self.activation.apply(&x.apply(&self.norm1)), train);
        let e = self.activation.apply(emb).apply(&self.emb_proj).unsqueeze(-1).unsqueeze(-1);
        let h = if self.scale_shift {
            let (scale, shift) = (e.narrow(1, 0, self.out_channels), e.narrow(1, self.out_channels, self.out_channels));
            h.apply(&self.norm2) * (scale + 1.0) + shift
        } else {
            (h + e).apply(&self.norm2)
        };
        let h = self.conv2.forward(&self.activation.apply(&h).dropout(self.dropout, train), train);
        match &self.skip {
            Some(skip) => skip.forward(x) + h,
            None => x + h,
        }
    }
}
