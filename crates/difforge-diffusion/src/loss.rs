//! The diffusion loss: the mean squared error between the network's output and the target of
//! the forward process, per sample, weighted by timestep. Training minimises its batch mean;
//! validation reports it per sample and per timestep band.

use tch::{Kind, Tensor};

/// The mean over every dimension but the batch of (output - target)^2, in `kind`.
pub fn per_sample_mse(output: &Tensor, target: &Tensor, kind: Kind) -> Tensor {
    let dims: Vec<i64> = (1..output.dim() as i64).collect();
    (output - target).square().mean_dim(dims.as_slice(), false, kind)
}

/// The training objective: the weighted mean of the per-sample MSE (`weights` (B,) float32).
pub fn weighted_mse(output: &Tensor, target: &Tensor, weights: &Tensor) -> Tensor {
    (per_sample_mse(output, target, Kind::Float) * weights).mean(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_scale_each_sample() {
        let out = Tensor::from_slice(&[1.0f32, 1.0, 3.0, 3.0]).view([2, 1, 1, 2]);
        let target = Tensor::zeros([2, 1, 1, 2], (Kind::Float, tch::Device::Cpu));
        let per = per_sample_mse(&out, &target, Kind::Double);
        assert_eq!(Vec::<f64>::try_from(&per).unwrap(), vec![1.0, 9.0]);
        let w = Tensor::from_slice(&[1.0f32, 0.5]);
        assert_eq!(weighted_mse(&out, &target, &w).double_value(&[]), 2.75);
    }
}
