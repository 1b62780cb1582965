//! diffusers' `Attention` (with `AttnProcessor2_0`: libtorch's scaled_dot_product_attention):
//! queries from the input, keys and values from the context (the input itself for
//! self-attention), `heads` heads of `dim_head`, output projection `to_out.0`. The VAE's
//! mid-block variant adds a GroupNorm in front, works on (B, C, H, W) and adds its input back.

use crate::lora::{Linear, LoraSpec};
use tch::{nn, Tensor};

#[derive(Debug)]
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: i64,
    group_norm: Option<nn::GroupNorm>,
}

/// Widths of one attention layer: queries from `query_dim`, keys and values from `context_dim`.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub query_dim: i64,
    pub context_dim: i64,
    pub heads: i64,
    pub dim_head: i64,
    /// Whether q, k and v have biases (the VAE's do; the UNet's transformers' do not).
    pub qkv_bias: bool,
}

impl Attention {
    pub fn new(p: &nn::Path, s: AttentionShape) -> Attention {
        Attention::with_lora(p, s, None)
    }

    /// With LoRA adapters on the four projections when `lora` is given (kohya's and diffusers'
    /// default targets for SD LoRA).
    pub fn with_lora(p: &nn::Path, s: AttentionShape, lora: Option<&LoraSpec>) -> Attention {
        let inner = s.heads * s.dim_head;
        let qkv = nn::LinearConfig { bias: s.qkv_bias, ..Default::default() };
        Attention {
            to_q: Linear::new(p / "to_q", s.query_dim, inner, qkv, lora),
            to_k: Linear::new(p / "to_k", s.context_dim, inner, qkv, lora),
            to_v: Linear::new(p / "to_v", s.context_dim, inner, qkv, lora),
            to_out: Linear::new(p / "to_out" / "0", inner, s.query_dim, Default::default(), lora),
            heads: s.heads,
            group_norm: None,
        }
    }

    /// The VAE mid-block's single-head spatial self-attention over `channels`.
    pub fn spatial(p: &nn::Path, channels: i64, groups: i64, eps: f64) -> Attention {
        let shape = AttentionShape { query_dim: channels, context_dim: channels, heads: 1, dim_head: channels, qkv_bias: true };
        Attention { group_norm: Some(super::resnet::group_norm(p / "group_norm", groups, channels, eps)), ..Attention::new(p, shape) }
    }

    /// (B, N, query_dim) attending to `context` (B, M, context_dim), or to itself when None.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Tensor {
        self.forward_t(x, context, false)
    }

    /// [`Attention::forward`]; `train` turns the adapters' dropout on.
    pub fn forward_t(&self, x: &Tensor, context: Option<&Tensor>, train: bool) -> Tensor {
        let split = |t: Tensor| {
            let (b, n, inner) = t.size3().expect("attention projections are (B, N, D)");
            t.view([b, n, self.heads, inner / self.heads]).transpose(1, 2)
        };
        let context = context.unwrap_or(x);
        let q = split(self.to_q.forward(x, train));
        let k = split(self.to_k.forward(context, train));
        let v = split(self.to_v.forward(context, train));
        let h = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, false, None, false);
        let (b, heads, n, d) = h.size4().expect("attention output is (B, heads, N, d)");
        self.to_out.forward(&h.transpose(1, 2).reshape([b, n, heads * d]), train)
    }

    /// The spatial form: (B, C, H, W) in and out, normed first, input added back.
    pub fn forward_spatial(&self, x: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().expect("spatial attention takes (B, C, H, W)");
        let normed = match &self.group_norm {
            Some(norm) => x.apply(norm),
            None => x.shallow_clone(),
        };
        let tokens = normed.view([b, c, h * w]).transpose(1, 2);
        self.forward(&tokens, None).transpose(1, 2).reshape([b, c, h, w]) + x
    }
}
