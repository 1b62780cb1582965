//! Multi-head self-attention over the pixels of a feature map, through libtorch's
//! scaled_dot_product_attention (flash / memory-efficient kernels where the device has them).
//! The q/k/v/out projections are separate linears, named as diffusers names them, so that
//! LoRA can target them.

use crate::lora::{self, LoraSpec, LoraTarget};
use tch::{nn, Tensor};

#[derive(Debug)]
pub struct SelfAttention {
    norm: nn::GroupNorm,
    to_q: lora::Linear,
    to_k: lora::Linear,
    to_v: lora::Linear,
    to_out: lora::Linear,
    heads: i64,
}

impl SelfAttention {
    pub fn new(p: &nn::Path, channels: i64, heads: i64, groups: i64, lora: Option<&LoraSpec>) -> SelfAttention {
        let zero = nn::LinearConfig { ws_init: nn::Init::Const(0.0), ..Default::default() };
        let lora = lora.filter(|l| l.wants(LoraTarget::Attention));
        let proj = |name: &str, cfg| lora::Linear::new(p / name, channels, channels, cfg, lora);
        SelfAttention {
            norm: nn::group_norm(p / "norm", groups, channels, Default::default()),
            to_q: proj("to_q", Default::default()),
            to_k: proj("to_k", Default::default()),
            to_v: proj("to_v", Default::default()),
            to_out: proj("to_out", zero),
            heads,
        }
    }

    /// (B, H*W, C) tokens -> (B, heads, H*W, C/heads).
    fn split_heads(&self, x: &Tensor) -> Tensor {
        let (b, n, c) = x.size3().expect("tokens are 3-d");
        x.view([b, n, self.heads, c / self.heads]).transpose(1, 2)
    }

    fn tokens(&self, x: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().expect("feature maps are 4-d");
        x.apply(&self.norm).view([b, c, h * w]).transpose(1, 2)
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let (b, c, h, w) = x.size4().expect("feature maps are 4-d");
        let t = self.tokens(x);
        let (q, k, v) =
            (self.split_heads(&self.to_q.forward(&t, train)), self.split_heads(&self.to_k.forward(&t, train)), self.split_heads(&self.to_v.forward(&t, train)));
        let o = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, false, None, false);
        let o = self.to_out.forward(&o.transpose(1, 2).reshape([b, h * w, c]), train);
        x + o.transpose(1, 2).view([b, c, h, w])
    }

    /// The attention weights (B, heads, H*W, H*W) for a feature map: softmax(q k^T / sqrt(d)).
    pub fn weights(&self, x: &Tensor) -> Tensor {
        let t = self.tokens(x);
        let (q, k) = (self.split_heads(&self.to_q.forward(&t, false)), self.split_heads(&self.to_k.forward(&t, false)));
        let d = q.size()[3] as f64;
        (q.matmul(&k.transpose(-2, -1)) / d.sqrt()).softmax(-1, tch::Kind::Float)
    }
}
