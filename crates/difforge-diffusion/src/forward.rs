//! The forward process, in one place: clean images x0 and noise eps at timesteps t give the noisy
//! input x_t = a x0 + s eps, the training target the network must predict, and each sample's
//! loss weight. Training, validation and explanations all noise images through here.

use crate::prediction::Prediction;
use crate::schedule::NoiseSchedule;
use tch::{Device, Tensor};

/// One batch pushed through the forward process.
pub struct Noised {
    /// The network's input.
    pub x_t: Tensor,
    /// What the network should output (depends on the prediction type).
    pub target: Tensor,
    /// The loss weight of each sample (min-SNR-gamma, or ones), on the host.
    pub weights: Vec<f64>,
}

/// The forward process of a run: its schedule, prediction type and loss weighting.
#[derive(Clone, Copy)]
pub struct ForwardProcess<'a> {
    pub schedule: &'a NoiseSchedule,
    pub prediction: Prediction,
    /// Min-SNR-gamma; 0 weighs every timestep alike.
    pub min_snr_gamma: f64,
}

impl ForwardProcess<'_> {
    /// Noises `x0` with `eps` (both (B, ...) on `device`) at timesteps `ts` (one per sample).
    pub fn noise(&self, x0: &Tensor, eps: &Tensor, ts: &[usize], device: Device) -> Noised {
        let (a, s) = self.schedule.coefficients(ts, device);
        let x_t = x0 * &a + eps * &s;
        let target = self.prediction.target(x0, eps, &a, &s);
        Noised { x_t, target, weights: self.prediction.loss_weights(self.schedule, self.min_snr_gamma, ts) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ScheduleKind;
    use tch::Kind;

    #[test]
    fn noised_input_and_target_invert_back_to_the_clean_image() {
        let schedule = NoiseSchedule::new(ScheduleKind::Cosine, 1000, 1e-4, 0.02);
        let x0 = Tensor::rand([3, 1, 4, 4], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let eps = Tensor::randn([3, 1, 4, 4], (Kind::Float, Device::Cpu));
        let ts = [0, 500, 999];
        let fwd = ForwardProcess { schedule: &schedule, prediction: Prediction::V, min_snr_gamma: 5.0 };
        let n = fwd.noise(&x0, &eps, &ts, Device::Cpu);
        let (a, s) = schedule.coefficients(&ts, Device::Cpu);
        let (rx0, reps) = Prediction::V.split(&n.target, &n.x_t, &a, &s);
        assert!((rx0 - &x0).abs().max().double_value(&[]) < 1e-4);
        assert!((reps - &eps).abs().max().double_value(&[]) < 1e-4);
        assert_eq!(n.weights.len(), 3);
        assert!(n.weights[0] < n.weights[2] || n.weights[0] <= 1.0);
    }
}
