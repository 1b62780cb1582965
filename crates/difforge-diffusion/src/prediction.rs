//! What the network predicts, the training target, the conversion of an output back to the
//! clean image and the noise, and min-SNR-gamma loss weights.
//!
//! With a = sqrt(alpha_bar), s = sqrt(1 - alpha_bar) and x_t = a x0 + s eps:
//! v = a eps - s x0, so x0 = a x_t - s v and eps = s x_t + a v.

use tch::Tensor;

difforge_core::choice! {
    /// What the network predicts.
    pub enum Prediction {
        /// The noise that was added.
        Epsilon = "epsilon",
        /// v = a eps - s x0 (Salimans & Ho 2022).
        V = "v",
        /// The clean image.
        X0 = "x0",
    }
}

impl Prediction {
    /// The training target for clean images x0 and noise eps; `a`, `s` broadcast over images.
    pub fn target(self, x0: &Tensor, eps: &Tensor, a: &Tensor, s: &Tensor) -> Tensor {
        match self {
            Prediction::Epsilon => eps.shallow_clone(),
            Prediction::X0 => x0.shallow_clone(),
            Prediction::V => a * eps - s * x0,
        }
    }

    /// (x0, eps) implied by a model output at x_t.
    pub fn split(self, out: &Tensor, x_t: &Tensor, a: &Tensor, s: &Tensor) -> (Tensor, Tensor) {
        match self {
            Prediction::Epsilon => ((x_t - s * out) / a, out.shallow_clone()),
            Prediction::X0 => (out.shallow_clone(), (x_t - a * out) / s),
            Prediction::V => (a * x_t - s * out, s * x_t + a * out),
        }
    }

    /// The loss weight of each timestep: min-SNR-gamma with `gamma` > 0, else 1.
    pub fn loss_weights(self, schedule: &crate::NoiseSchedule, gamma: f64, ts: &[usize]) -> Vec<f64> {
        ts.iter().map(|&t| if gamma > 0.0 { self.min_snr_weight(schedule.snr(t), gamma) } else { 1.0 }).collect()
    }

    /// Min-SNR-gamma weight of the per-image MSE for a signal-to-noise ratio: it caps the weight
    /// of the easy, low-noise timesteps so that they do not dominate (Hang et al. 2023).
    pub fn min_snr_weight(self, snr: f64, gamma: f64) -> f64 {
        let clipped = snr.min(gamma);
        match self {
            Prediction::Epsilon => clipped / snr,
            Prediction::V => clipped / (snr + 1.0),
            Prediction::X0 => clipped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn split_inverts_target_for_every_parameterisation() {
        let x0 = Tensor::randn([2, 1, 4, 4], (Kind::Double, tch::Device::Cpu));
        let eps = Tensor::randn([2, 1, 4, 4], (Kind::Double, tch::Device::Cpu));
        let ab = 0.3f64;
        let (a, s) = (Tensor::from(ab.sqrt()), Tensor::from((1.0 - ab).sqrt()));
        let x_t = &x0 * &a + &eps * &s;
        for p in [Prediction::Epsilon, Prediction::V, Prediction::X0] {
            let out = p.target(&x0, &eps, &a, &s);
            let (rx0, reps) = p.split(&out, &x_t, &a, &s);
            assert!((rx0 - &x0).abs().max().double_value(&[]) < 1e-9, "{p:?}");
            assert!((reps - &eps).abs().max().double_value(&[]) < 1e-9, "{p:?}");
        }
    }

    #[test]
    fn min_snr_weights() {
        assert_eq!(Prediction::Epsilon.min_snr_weight(10.0, 5.0), 0.5);
        assert_eq!(Prediction::Epsilon.min_snr_weight(1.0, 5.0), 1.0);
        assert_eq!(Prediction::V.min_snr_weight(1.0, 5.0), 0.5);
    }
}
