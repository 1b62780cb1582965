//! The UNet's time embedding: diffusers' sinusoidal `Timesteps` (with its `flip_sin_to_cos` and
//! `downscale_freq_shift`) and `TimestepEmbedding` (linear, SiLU, linear).

use tch::{nn, Device, Kind, Tensor};

/// diffusers' `get_timestep_embedding`: `dim` features of each value in `t` (N,), frequencies
/// exp(-ln(10000) * i / (dim/2 - freq_shift)); sines first unless `flip_sin_to_cos`.
pub fn timestep_features(t: &Tensor, dim: i64, flip_sin_to_cos: bool, freq_shift: f64) -> Tensor {
    let half = dim / 2;
    let exponent = Tensor::arange(half, (Kind::Float, Device::Cpu)) * (-(10000f64.ln()) / (half as f64 - freq_shift));
    let angles = t.to_kind(Kind::Float).unsqueeze(1) * exponent.exp().to_device(t.device()).unsqueeze(0);
    let (sin, cos) = (angles.sin(), angles.cos());
    let emb = if flip_sin_to_cos { Tensor::cat(&[cos, sin], -1) } else { Tensor::cat(&[sin, cos], -1) };
    if dim % 2 == 1 {
        emb.constant_pad_nd([0, 1])
    } else {
        emb
    }
}

#[derive(Debug)]
pub struct TimestepEmbedding {
    linear_1: nn::Linear,
    linear_2: nn::Linear,
}

impl TimestepEmbedding {
    pub fn new(p: &nn::Path, cin: i64, dim: i64) -> TimestepEmbedding {
        TimestepEmbedding {
            linear_1: nn::linear(p / "linear_1", cin, dim, Default::default()),
            linear_2: nn::linear(p / "linear_2", dim, dim, Default::default()),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.apply(&self.linear_1).silu().apply(&self.linear_2)
    }
}
