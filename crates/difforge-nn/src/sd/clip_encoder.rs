//! transformers' `CLIPEncoderLayer`, shared by CLIP's text tower (causal self-attention) and its
//! image tower (every patch sees every other): pre-norm attention and MLP, each with a residual,
//! with transformers' tensor names (`layer_norm1`, `self_attn.q_proj`, ..., `mlp.fc1`, `mlp.fc2`).
//! The attention projections can carry LoRA adapters (kohya's and diffusers' text-encoder LoRA
//! targets).

use super::clip_text::ClipActivation;
use crate::lora::{Linear, LoraSpec};
use tch::nn;
use tch::Tensor;

/// The sizes and settings of one tower's layers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerShape {
    pub hidden: i64,
    pub heads: i64,
    pub intermediate: i64,
    pub act: ClipActivation,
    pub layer_norm_eps: f64,
    /// A token sees only itself and those before it (the text tower), as transformers' causal mask.
    pub causal: bool,
}

impl LayerShape {
    /// A layer norm over `hidden` with the tower's epsilon.
    pub(crate) fn layer_norm(&self, p: nn::Path) -> nn::LayerNorm {
        nn::layer_norm(p, vec![self.hidden], nn::LayerNormConfig { eps: self.layer_norm_eps, ..Default::default() })
    }
}

#[derive(Debug)]
struct SelfAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: i64,
    scale: f64,
    causal: bool,
}

impl SelfAttention {
    fn new(p: &nn::Path, s: &LayerShape, lora: Option<&LoraSpec>) -> SelfAttention {
        let proj = |name: &str| Linear::new(p / name, s.hidden, s.hidden, Default::default(), lora);
        SelfAttention {
            q_proj: proj("q_proj"),
            k_proj: proj("k_proj"),
            v_proj: proj("v_proj"),
            out_proj: proj("out_proj"),
            heads: s.heads,
            scale: ((s.hidden / s.heads) as f64).powf(-0.5),
            causal: s.causal,
        }
    }

    /// (B, L, C) -> (B, heads, L, C / heads).
    fn split_heads(&self, x: &Tensor) -> Tensor {
        x.unflatten(-1, [self.heads, -1]).transpose(1, 2)
    }

    /// `train`: adapter dropout on.
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let proj = |l: &Linear| self.split_heads(&l.forward(x, train));
        let (q, k, v) = (proj(&self.q_proj), proj(&self.k_proj), proj(&self.v_proj));
        let o = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, self.causal, self.scale, false);
        self.out_proj.forward(&o.transpose(1, 2).flatten(2, 3), train)
    }
}

#[derive(Debug)]
pub(crate) struct EncoderLayer {
    layer_norm1: nn::LayerNorm,
    self_attn: SelfAttention,
    layer_norm2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    act: ClipActivation,
}

impl EncoderLayer {
    pub(crate) fn new(p: &nn::Path, s: &LayerShape) -> EncoderLayer {
        EncoderLayer::with_lora(p, s, None)
    }

    /// With LoRA adapters on q_proj, k_proj, v_proj and out_proj when `lora` is given.
    pub(crate) fn with_lora(p: &nn::Path, s: &LayerShape, lora: Option<&LoraSpec>) -> EncoderLayer {
        EncoderLayer {
            layer_norm1: s.layer_norm(p / "layer_norm1"),
            self_attn: SelfAttention::new(&(p / "self_attn"), s, lora),
            layer_norm2: s.layer_norm(p / "layer_norm2"),
            fc1: nn::linear(p / "mlp" / "fc1", s.hidden, s.intermediate, Default::default()),
            fc2: nn::linear(p / "mlp" / "fc2", s.intermediate, s.hidden, Default::default()),
            act: s.act,
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_t(x, false)
    }

    /// `train`: adapter dropout on.
    pub(crate) fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let h = x + self.self_attn.forward(&x.apply(&self.layer_norm1), train);
        let mlp = self.act.apply(&h.apply(&self.layer_norm2).apply(&self.fc1)).apply(&self.fc2);
        h + mlp
    }
}
