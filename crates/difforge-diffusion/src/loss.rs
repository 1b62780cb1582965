//! The diffusion loss: the mean squared error (or the pseudo-Huber loss) between the network's
//! output and the target of the forward process, per sample, weighted by timestep. Training
//! minimises its batch mean; validation reports it per sample and per timestep band.

use tch::{Kind, Tensor};

difforge_core::choice! {
    /// The per-element loss.
    pub enum LossKind {
        /// (output - target)^2.
        Mse = "mse",
        /// Pseudo-Huber, 2c (sqrt((output - target)^2 + c^2) - c) as diffusers' `--loss_type huber`:
        /// quadratic near zero, linear for large errors, so outlier images pull less.
        Huber = "huber",
    }
}

/// A loss of the `[diffusion]` section: its kind and the Huber constant c.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Loss {
    pub kind: LossKind,
    pub huber_c: f64,
}

impl Loss {
    /// The mean over every dimension but the batch, in `kind`.
    pub fn per_sample(&self, output: &Tensor, target: &Tensor, kind: Kind) -> Tensor {
        match self.kind {
            LossKind::Mse => per_sample_mse(output, target, kind),
            LossKind::Huber => {
                let c = self.huber_c;
                let dims: Vec<i64> = (1..output.dim() as i64).collect();
                (((output - target).square() + c * c).sqrt() - c).mean_dim(dims.as_slice(), false, kind) * (2.0 * c)
            }
        }
    }

    /// The training objective: the weighted mean of the per-sample loss.
    pub fn weighted(&self, output: &Tensor, target: &Tensor, weights: &Tensor) -> Tensor {
        (self.per_sample(output, target, Kind::Float) * weights).mean(Kind::Float)
    }
}

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

    #[test]
    fn huber_is_quadratic_near_zero_and_linear_far_away() {
        let huber = Loss { kind: LossKind::Huber, huber_c: 0.1 };
        let target = Tensor::zeros([2, 1], (Kind::Double, tch::Device::Cpu));
        let out = Tensor::from_slice(&[0.01f64, 10.0]).view([2, 1]);
        let per = Vec::<f64>::try_from(&huber.per_sample(&out, &target, Kind::Double)).unwrap();
        // Near zero about d^2 (0.0001); far away about 2c |d| (2.0).
        assert!((per[0] - 1e-4).abs() < 1e-6 && (per[1] - 2.0).abs() < 0.02, "{per:?}");
        let mse = Loss { kind: LossKind::Mse, huber_c: 0.1 };
        assert_eq!(Vec::<f64>::try_from(&mse.per_sample(&out, &target, Kind::Double)).unwrap(), vec![1e-4, 100.0]);
    }
}
