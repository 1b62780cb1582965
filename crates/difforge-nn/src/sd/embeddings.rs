//! The UNet's time embedding: diffusers' sinusoidal `Timesteps` (with its `flip_sin_to_cos` and
//! `downscale_freq_shift`) and `TimestepEmbedding` (linear, SiLU, linear).

use tch::{nn, Kind, Tensor};

/// diffusers' `get_timestep_embedding`: `dim` features of each value in `t` (N,), frequencies
/// exp(-ln(10000) * i / (dim/2 - freq_shift)); sines first unless `flip_sin_to_cos`. Every tensor
/// is made on `t`'s device (diffusers' `torch.arange(..., device=timesteps.device)`): a host
/// tensor copied up in every forward pass would synchronise with the GPU, which CUDA graph
/// capture forbids.
pub fn timestep_features(t: &Tensor, dim: i64, flip_sin_to_cos: bool, freq_shift: f64) -> Tensor {
    let half = dim / 2;
    let exponent = arange_like(t, half) * (-(10000f64.ln()) / (half as f64 - freq_shift));
    let angles = t.to_kind(Kind::Float).unsqueeze(1) * exponent.exp().unsqueeze(0);
    let (sin, cos) = (angles.sin(), angles.cos());
    let emb = if flip_sin_to_cos { Tensor::cat(&[cos, sin], -1) } else { Tensor::cat(&[sin, cos], -1) };
    if dim % 2 == 1 {
        emb.constant_pad_nd([0, 1])
    } else {
        emb
    }
}

/// 0, 1, ..., n-1 as float32 on the device of `like`, computed there (exact: float32 sums of
/// ones up to 2^24, so equal to `arange`). Derived from `like` itself rather than through
/// `like.device()`, because tch names only the devices it knows and reads any other (the meta
/// device of the device tests) as MPS.
fn arange_like(like: &Tensor, n: i64) -> Tensor {
    let one = like.flatten(0, -1).sum(Kind::Float).ones_like();
    one.expand([n], false).cumsum(0, Kind::Float) - 1.0
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

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn arange_like_equals_arange_bit_for_bit() {
        let like = Tensor::from_slice(&[3i64, 7]);
        for n in [0, 1, 160, 1280] {
            assert!(arange_like(&like, n).equal(&Tensor::arange(n, (Kind::Float, Device::Cpu))), "n = {n}");
        }
    }

    #[test]
    fn timestep_features_are_those_of_host_frequencies_bit_for_bit() {
        // The formula as it stood with the frequencies made on the host (and copied up).
        let t = Tensor::from_slice(&[0.0f32, 1.0, 261.0, 999.0]);
        let (dim, shift) = (320, 1.0);
        let half = dim / 2;
        let exponent = Tensor::arange(half, (Kind::Float, Device::Cpu)) * (-(10000f64.ln()) / (half as f64 - shift));
        let angles = t.unsqueeze(1) * exponent.exp().unsqueeze(0);
        let expected = Tensor::cat(&[angles.cos(), angles.sin()], -1);
        assert!(timestep_features(&t, dim, true, shift).equal(&expected));
    }
}
