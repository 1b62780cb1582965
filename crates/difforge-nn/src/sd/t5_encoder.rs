//! transformers' `T5EncoderModel` in the v1.1 layout that Stable Diffusion 3 uses as its third
//! text encoder (T5-XXL), with transformers' tensor names (`shared.weight`,
//! `encoder.block.0.layer.0.SelfAttention.q.weight`, ...), so that a pipeline's
//! `text_encoder_3/` folder loads as it is.
//!
//! Pre-norm blocks of self-attention and a feed-forward layer, both with T5's RMS norm (no mean,
//! no bias). Attention is unscaled, plus a learned bias per relative-position bucket that the
//! first block computes and every block shares; padding is masked out through that bias. The
//! feed-forward is gated: act(wi_0 x) * wi_1 x, then wo (gated-GELU with the tanh GELU for
//! v1.1 and XXL; ReLU for the original T5).

use super::config_bounds::{fits_in_memory, sizes_within, ComponentConfig};
use super::load;
use crate::error::NnError;
use difforge_core::ConfigError;
use serde::Deserialize;
use std::path::Path;
use tch::nn::{self, VarStore};
use tch::{Device, Kind, Tensor};

/// A transformers `T5Config` (`config.json`): the fields the encoder needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct T5Config {
    pub vocab_size: i64,
    pub d_model: i64,
    pub d_kv: i64,
    pub d_ff: i64,
    pub num_layers: i64,
    pub num_heads: i64,
    pub relative_attention_num_buckets: i64,
    pub relative_attention_max_distance: i64,
    pub layer_norm_epsilon: f64,
    /// "gated-gelu" (v1.1, XXL: SD3's), "relu" or "gated-relu", "gelu".
    pub feed_forward_proj: String,
}

impl Default for T5Config {
    /// transformers' `T5Config()` defaults.
    fn default() -> Self {
        T5Config {
            vocab_size: 32128,
            d_model: 512,
            d_kv: 64,
            d_ff: 2048,
            num_layers: 6,
            num_heads: 8,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "relu".into(),
        }
    }
}

/// The feed-forward's activation and whether it is gated.
#[derive(Debug, Clone, Copy, PartialEq)]
enum FeedForward {
    Relu {
        gated: bool,
    },
    /// transformers' `gelu_new` (the tanh approximation), which "gated-gelu" selects.
    GeluTanh {
        gated: bool,
    },
}

impl T5Config {
    fn feed_forward(&self) -> Result<FeedForward, ConfigError> {
        match self.feed_forward_proj.as_str() {
            "relu" => Ok(FeedForward::Relu { gated: false }),
            "gated-relu" => Ok(FeedForward::Relu { gated: true }),
            "gelu" => Ok(FeedForward::GeluTanh { gated: false }),
            "gated-gelu" => Ok(FeedForward::GeluTanh { gated: true }),
            other => Err(ConfigError::new("feed_forward_proj", format!("\"{other}\""), "\"gated-gelu\", \"gelu\", \"gated-relu\" or \"relu\"")),
        }
    }
}

impl ComponentConfig for T5Config {
    /// Upper bounds far above T5-XXL (4,096 wide, 64 heads, 24 layers, 10,240 feed-forward).
    fn check_sizes(&self) -> Result<(), ConfigError> {
        sizes_within(&[
            ("vocab_size", self.vocab_size, 1 << 20),
            ("d_model", self.d_model, 16384),
            ("d_kv", self.d_kv, 1024),
            ("d_ff", self.d_ff, 131072),
            ("num_layers", self.num_layers, 256),
            ("num_heads", self.num_heads, 1024),
            ("relative_attention_num_buckets", self.relative_attention_num_buckets, 4096),
            ("relative_attention_max_distance", self.relative_attention_max_distance, 1 << 20),
        ])?;
        if self.relative_attention_num_buckets < 4 {
            return Err(ConfigError::new(
                "relative_attention_num_buckets",
                self.relative_attention_num_buckets,
                "at least 4 (two directions, exact and logarithmic)",
            ));
        }
        if !(self.layer_norm_epsilon.is_finite() && self.layer_norm_epsilon > 0.0) {
            return Err(ConfigError::new("layer_norm_epsilon", self.layer_norm_epsilon, "a positive number"));
        }
        self.feed_forward()?;
        let (d, inner) = (self.d_model as f64, (self.num_heads * self.d_kv) as f64);
        let per_layer = 4.0 * d * inner + 3.0 * d * self.d_ff as f64;
        fits_in_memory(self.vocab_size as f64 * d + self.num_layers as f64 * per_layer)
    }
}

/// T5's layer norm: x / sqrt(mean(x^2) + eps), times a weight; computed in float32.
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(p: nn::Path, d: i64, eps: f64) -> RmsNorm {
        RmsNorm { weight: p.var("weight", &[d], nn::Init::Const(1.0)), eps }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let x32 = x.to_kind(Kind::Float);
        let variance = x32.square().mean_dim([-1i64].as_slice(), true, Kind::Float);
        (&self.weight * (x32 * (variance + self.eps).rsqrt())).to_kind(self.weight.kind())
    }
}

fn linear(p: nn::Path, input: i64, output: i64) -> nn::Linear {
    nn::linear(p, input, output, nn::LinearConfig { bias: false, ..Default::default() })
}

struct Block {
    attention_norm: RmsNorm,
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    o: nn::Linear,
    ff_norm: RmsNorm,
    wi: Vec<nn::Linear>,
    wo: nn::Linear,
}

impl Block {
    fn new(p: nn::Path, c: &T5Config, ff: FeedForward) -> Block {
        let (d, inner) = (c.d_model, c.num_heads * c.d_kv);
        let attn = p.clone() / "layer" / 0;
        let sa = attn.clone() / "SelfAttention";
        let dense = p / "layer" / 1;
        let ffp = dense.clone() / "DenseReluDense";
        let gated = matches!(ff, FeedForward::Relu { gated: true } | FeedForward::GeluTanh { gated: true });
        let wi = if gated {
            vec![linear(ffp.clone() / "wi_0", d, c.d_ff), linear(ffp.clone() / "wi_1", d, c.d_ff)]
        } else {
            vec![linear(ffp.clone() / "wi", d, c.d_ff)]
        };
        Block {
            attention_norm: RmsNorm::new(attn / "layer_norm", d, c.layer_norm_epsilon),
            q: linear(sa.clone() / "q", d, inner),
            k: linear(sa.clone() / "k", d, inner),
            v: linear(sa.clone() / "v", d, inner),
            o: linear(sa / "o", inner, d),
            ff_norm: RmsNorm::new(dense / "layer_norm", d, c.layer_norm_epsilon),
            wi,
            wo: linear(ffp / "wo", c.d_ff, d),
        }
    }

    /// `bias`: (1 or B, heads, L, L), the position bias with the padding mask added.
    fn forward(&self, x: &Tensor, bias: &Tensor, heads: i64, ff: FeedForward) -> Tensor {
        let (b, l, _) = x.size3().expect("a (B, L, D) hidden state");
        let h = self.attention_norm.forward(x);
        let split = |t: Tensor| t.view([b, l, heads, -1]).transpose(1, 2);
        let (q, k, v) = (split(h.apply(&self.q)), split(h.apply(&self.k)), split(h.apply(&self.v)));
        // Unscaled scores (T5 folds the 1/sqrt(d) into its initialisation), softmax in float32.
        let scores = q.matmul(&k.transpose(-1, -2)) + bias;
        let weights = scores.to_kind(Kind::Float).softmax(-1, Kind::Float).to_kind(v.kind());
        let attended = weights.matmul(&v).transpose(1, 2).contiguous().view([b, l, -1]);
        let x = x + attended.apply(&self.o);
        let h = self.ff_norm.forward(&x);
        let act = |t: Tensor| match ff {
            FeedForward::Relu { .. } => t.relu(),
            FeedForward::GeluTanh { .. } => t.gelu("tanh"),
        };
        let inner = match self.wi.as_slice() {
            [wi_0, wi_1] => act(h.apply(wi_0)) * h.apply(wi_1),
            [wi] => act(h.apply(wi)),
            _ => unreachable!("one or two input projections"),
        };
        &x + inner.apply(&self.wo)
    }
}

/// The encoder stack (`T5EncoderModel`).
pub struct T5Encoder {
    config: T5Config,
    feed_forward: FeedForward,
    shared: nn::Embedding,
    relative_attention_bias: nn::Embedding,
    blocks: Vec<Block>,
    final_norm: RmsNorm,
}

impl T5Encoder {
    /// Builds the encoder under `p` (a VarStore's root, for transformers' names).
    pub fn new(p: &nn::Path, config: &T5Config) -> Result<T5Encoder, NnError> {
        config.check_sizes()?;
        let feed_forward = config.feed_forward()?;
        let encoder = p / "encoder";
        let bias_path = encoder.clone() / "block" / 0 / "layer" / 0 / "SelfAttention" / "relative_attention_bias";
        Ok(T5Encoder {
            shared: nn::embedding(p / "shared", config.vocab_size, config.d_model, Default::default()),
            relative_attention_bias: nn::embedding(bias_path, config.relative_attention_num_buckets, config.num_heads, Default::default()),
            blocks: (0..config.num_layers).map(|i| Block::new(encoder.clone() / "block" / i, config, feed_forward)).collect(),
            final_norm: RmsNorm::new(encoder / "final_layer_norm", config.d_model, config.layer_norm_epsilon),
            feed_forward,
            config: config.clone(),
        })
    }

    /// Reads a transformers `T5EncoderModel` folder (`config.json`, `model.safetensors` or its
    /// shards); `encoder.embed_tokens.weight`, tied to `shared.weight`, may be in the file or not.
    pub fn load(dir: &Path, device: Device) -> Result<T5Encoder, NnError> {
        let config: T5Config = load::read_config(dir)?;
        let mut vs = VarStore::new(device);
        let model = T5Encoder::new(&vs.root(), &config)?;
        let files = load::weight_files(dir, "model", None)?;
        let mut tensors = load::read_tensors(&files)?;
        tensors.remove("encoder.embed_tokens.weight");
        load::load_strict(&vs, &tensors, dir)?;
        vs.freeze();
        Ok(model)
    }

    pub fn config(&self) -> &T5Config {
        &self.config
    }

    /// The bucket of each relative position (key - query), bidirectional: half the buckets per
    /// direction, exact below a quarter of them, logarithmic up to `max_distance`.
    fn buckets(&self, len: i64, device: Device) -> Tensor {
        let c = &self.config;
        let positions = Tensor::arange(len, (Kind::Int64, device));
        let relative = positions.unsqueeze(0) - positions.unsqueeze(1);
        let half = c.relative_attention_num_buckets / 2;
        let direction = relative.gt(0).to_kind(Kind::Int64) * half;
        let distance = relative.abs();
        let max_exact = half / 2;
        let log_ratio = (distance.to_kind(Kind::Float) / max_exact as f64).log() / (c.relative_attention_max_distance as f64 / max_exact as f64).ln();
        let large = (log_ratio * (half - max_exact) as f64).to_kind(Kind::Int64) + max_exact;
        let large = large.clamp_max(half - 1);
        direction + distance.where_self(&distance.lt(max_exact), &large)
    }

    /// `last_hidden_state` (B, L, d_model) of token ids (B, L); `attention_mask` (B, L) of 1s
    /// and 0s keeps padding out of the attention (None: every token attends to every other).
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Tensor {
        let (_, len) = input_ids.size2().expect("(B, L) token ids");
        let device = input_ids.device();
        let mut x = input_ids.apply(&self.shared);
        let position_bias = self.buckets(len, device).apply(&self.relative_attention_bias).permute([2, 0, 1]).unsqueeze(0).to_kind(x.kind());
        // Padding is kept out by the bias itself (a new (B, heads, L, L) tensor: the position
        // bias broadcast over the batch), as transformers adds its extended mask to it.
        let bias = match attention_mask {
            Some(mask) => {
                let blocked = (-mask.to_kind(x.kind()) + 1.0) * f64::from(f32::MIN);
                &position_bias + blocked.view([mask.size()[0], 1, 1, len])
            }
            None => position_bias,
        };
        for block in &self.blocks {
            x = block.forward(&x, &bias, self.config.num_heads, self.feed_forward);
        }
        self.final_norm.forward(&x)
    }
}
