//! diffusers' `Transformer2DModel` on feature maps as Stable Diffusion's UNet uses it: GroupNorm,
//! `proj_in` (a 1x1 conv, or a linear layer with `use_linear_projection`), `BasicTransformerBlock`s
//! (self-attention, cross-attention to the text, GEGLU feed-forward, each pre-normed and
//! residual), `proj_out`, the input added back. LoRA adapters go on the attention projections,
//! `proj_in`/`proj_out` and the feed-forward layers, as `lora.targets` asks.

use super::attention::{Attention, AttentionShape};
use super::resnet::group_norm;
use crate::lora::{self, LoraSpec, LoraTarget};
use tch::{nn, Tensor};

/// The shape of one transformer: its channels, heads (diffusers' UNet reads the config's
/// `attention_head_dim` as the number of heads), stacked blocks and the text's width.
#[derive(Debug, Clone, Copy)]
pub struct TransformerShape {
    pub channels: i64,
    pub heads: i64,
    pub layers: i64,
    pub context_dim: i64,
    pub groups: i64,
    pub linear_projection: bool,
}

/// GEGLU feed-forward: `net.0.proj` to twice the inner width, value times GELU(gate), `net.2`.
#[derive(Debug)]
struct FeedForward {
    proj: lora::Linear,
    out: lora::Linear,
}

impl FeedForward {
    fn new(p: &nn::Path, dim: i64, lora: Option<&LoraSpec>) -> FeedForward {
        let inner = 4 * dim;
        FeedForward {
            proj: lora::Linear::new(p / "net" / "0" / "proj", dim, 2 * inner, Default::default(), lora),
            out: lora::Linear::new(p / "net" / "2", inner, dim, Default::default(), lora),
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let halves = self.proj.forward(x, train).chunk(2, -1);
        self.out.forward(&(&halves[0] * halves[1].gelu("none")), train)
    }
}

#[derive(Debug)]
struct BasicTransformerBlock {
    norm1: nn::LayerNorm,
    attn1: Attention,
    norm2: nn::LayerNorm,
    attn2: Attention,
    norm3: nn::LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    fn new(p: &nn::Path, s: &TransformerShape, lora: Option<&LoraSpec>) -> BasicTransformerBlock {
        let norm = |name: &str| nn::layer_norm(p / name, vec![s.channels], Default::default());
        let dim_head = s.channels / s.heads;
        let own = AttentionShape { query_dim: s.channels, context_dim: s.channels, heads: s.heads, dim_head, qkv_bias: false };
        let attention = LoraSpec::targeting(lora, LoraTarget::Attention);
        BasicTransformerBlock {
            norm1: norm("norm1"),
            attn1: Attention::with_lora(&(p / "attn1"), own, attention),
            norm2: norm("norm2"),
            attn2: Attention::with_lora(&(p / "attn2"), AttentionShape { context_dim: s.context_dim, ..own }, attention),
            norm3: norm("norm3"),
            ff: FeedForward::new(&(p / "ff"), s.channels, LoraSpec::targeting(lora, LoraTarget::FeedForward)),
        }
    }

    fn forward(&self, x: &Tensor, context: &Tensor, train: bool) -> Tensor {
        let x = self.attn1.forward_t(&x.apply(&self.norm1), None, train) + x;
        let x = self.attn2.forward_t(&x.apply(&self.norm2), Some(context), train) + x;
        self.ff.forward(&x.apply(&self.norm3), train) + x
    }
}

/// `proj_in` / `proj_out`: 1x1 convolutions on (B, C, H, W) (SD 1.x) or linear layers on the
/// (B, HW, C) tokens (SD 2.x, SDXL).
#[derive(Debug)]
enum Projection {
    /// Boxed: a conv (with its adapter's configs) is far larger than a linear layer.
    Conv(Box<lora::Conv>),
    Linear(lora::Linear),
}

impl Projection {
    fn new(p: nn::Path, channels: i64, linear: bool, lora: Option<&LoraSpec>) -> Projection {
        if linear {
            Projection::Linear(lora::Linear::new(p, channels, channels, Default::default(), lora))
        } else {
            Projection::Conv(Box::new(lora::Conv::new(p, channels, channels, 1, Default::default(), lora)))
        }
    }
}

fn to_tokens(x: &Tensor) -> Tensor {
    let (b, c, h, w) = x.size4().expect("feature maps are (B, C, H, W)");
    x.permute([0, 2, 3, 1]).reshape([b, h * w, c])
}

fn to_map(tokens: &Tensor, h: i64, w: i64) -> Tensor {
    let (b, _, c) = tokens.size3().expect("tokens are (B, N, C)");
    tokens.reshape([b, h, w, c]).permute([0, 3, 1, 2]).contiguous()
}

#[derive(Debug)]
pub struct Transformer2DModel {
    norm: nn::GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

impl Transformer2DModel {
    /// `lora`: adapters on the layers its `targets` name (attention, projection, feed_forward).
    pub fn new(p: &nn::Path, s: &TransformerShape, lora: Option<&LoraSpec>) -> Transformer2DModel {
        let projection = LoraSpec::targeting(lora, LoraTarget::Projection);
        Transformer2DModel {
            norm: group_norm(p / "norm", s.groups, s.channels, 1e-6),
            proj_in: Projection::new(p / "proj_in", s.channels, s.linear_projection, projection),
            blocks: (0..s.layers).map(|i| BasicTransformerBlock::new(&(p / "transformer_blocks" / i), s, lora)).collect(),
            proj_out: Projection::new(p / "proj_out", s.channels, s.linear_projection, projection),
        }
    }

    /// Feature maps (B, C, H, W) attending to `context` (B, tokens, context_dim); `train` turns
    /// the adapters' dropout on.
    pub fn forward(&self, x: &Tensor, context: &Tensor, train: bool) -> Tensor {
        let (_, _, h, w) = x.size4().expect("feature maps are (B, C, H, W)");
        let normed = x.apply(&self.norm);
        let mut tokens = match &self.proj_in {
            Projection::Conv(c) => to_tokens(&c.forward(&normed, train)),
            Projection::Linear(l) => l.forward(&to_tokens(&normed), train),
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context, train);
        }
        let out = match &self.proj_out {
            Projection::Conv(c) => c.forward(&to_map(&tokens, h, w), train),
            Projection::Linear(l) => to_map(&l.forward(&tokens, train), h, w),
        };
        out + x
    }
}
