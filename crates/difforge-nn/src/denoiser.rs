//! The interface every denoising network implements, whatever its family: predict the model
//! target from noisy input, timesteps and conditioning; optionally show its attention and count
//! its FLOPs.

use crate::conditioning::Conditioning;
use tch::Tensor;

/// (layer name, attention weights (B, heads, queries, keys)) of each attention layer.
pub type AttentionMaps = Vec<(String, Tensor)>;

pub trait DenoiserNet: Send + std::fmt::Debug {
    /// The prediction for noisy inputs `x` (B, C, H, W) at timesteps `t` (B,). `train` switches
    /// dropout on.
    fn forward(&self, x: &Tensor, t: &Tensor, cond: &Conditioning, train: bool) -> Tensor;

    /// `cond` with the work that every forward on it would repeat done once, for many forwards
    /// in a row (sampling): a network with its own text encoder encodes token ids here. None:
    /// nothing to do, pass `cond` as it is.
    fn prepare(&self, _cond: &Conditioning) -> Option<Conditioning> {
        None
    }

    /// The prediction and the weights of every attention layer in forward order, for
    /// explanations; None for networks that do not expose them.
    fn forward_with_attention(&self, _x: &Tensor, _t: &Tensor, _cond: &Conditioning) -> Option<(Tensor, AttentionMaps)> {
        None
    }

    /// FLOPs of one forward pass for one sample (a multiply-add counts 2; norms, activations
    /// and element-wise ops are left out), for benchmarks; None when not counted.
    fn flops_per_sample(&self) -> Option<f64> {
        None
    }
}
