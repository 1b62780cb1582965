//! Samplers: each walks the reverse process over a chosen subset of the training timesteps.
//! They all take the network's output converted to (x0, eps), so one sampler works with every
//! prediction target, and guidance happens before them.

mod ddim;
mod ddpm;
mod dpmpp_2m;

pub use ddim::Ddim;
pub use ddpm::Ddpm;
pub use dpmpp_2m::DpmPlusPlus2M;

use crate::config::{SamplerConfig, SamplerKind, Spacing};
use crate::schedule::NoiseSchedule;
use tch::Tensor;

pub trait Sampler {
    /// Training timesteps at which the model is evaluated, noisiest first.
    fn timesteps(&self) -> &[usize];

    /// Moves `x` from `timesteps()[i]` to the next timestep (or to t = 0 after the last), given
    /// the model's estimates of the clean image and of the noise. `noise` yields fresh Gaussian
    /// noise shaped like `x`, for samplers that add some.
    fn step(&mut self, i: usize, x: &Tensor, x0: &Tensor, eps: &Tensor, noise: &mut dyn FnMut() -> Tensor) -> Tensor;
}

/// Descending sampling timesteps, as diffusers' `timestep_spacing` defines them.
pub fn sampling_timesteps(train_steps: usize, steps: usize, spacing: Spacing) -> Vec<usize> {
    let steps = steps.clamp(1, train_steps);
    match spacing {
        Spacing::Trailing => {
            let ratio = train_steps as f64 / steps as f64;
            (0..steps).map(|i| ((train_steps as f64 - i as f64 * ratio).round() as usize).saturating_sub(1)).collect()
        }
        Spacing::Leading => {
            let ratio = train_steps / steps;
            (0..steps).rev().map(|i| i * ratio).collect()
        }
    }
}

/// alpha_bar at each sampling timestep and at the one after it (1.0 after the last).
pub(crate) fn alpha_bars(schedule: &NoiseSchedule, ts: &[usize]) -> (Vec<f64>, Vec<f64>) {
    let cur: Vec<f64> = ts.iter().map(|&t| schedule.alpha_bar(Some(t))).collect();
    let next: Vec<f64> = (0..ts.len()).map(|i| schedule.alpha_bar(ts.get(i + 1).copied())).collect();
    (cur, next)
}

pub fn build(cfg: &SamplerConfig, schedule: &NoiseSchedule) -> Box<dyn Sampler> {
    let ts = sampling_timesteps(schedule.len(), cfg.steps, cfg.spacing);
    match cfg.sampler {
        SamplerKind::Ddpm => Box::new(Ddpm::new(schedule, ts)),
        SamplerKind::Ddim => Box::new(Ddim::new(schedule, ts, cfg.eta)),
        SamplerKind::DpmPlusPlus2M => Box::new(DpmPlusPlus2M::new(schedule, ts)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::ScheduleKind;
    use tch::{Device, Kind};

    #[test]
    fn trailing_spacing_matches_diffusers() {
        let ts = sampling_timesteps(1000, 25, Spacing::Trailing);
        assert_eq!(ts.len(), 25);
        assert_eq!(&ts[..3], &[999, 959, 919]);
        assert_eq!(*ts.last().unwrap(), 39);
        let lead = sampling_timesteps(1000, 50, Spacing::Leading);
        assert_eq!((lead[0], lead[49]), (980, 0));
    }

    /// The conformance test every sampler must pass: fed the exact (x0, eps) of a known clean
    /// image at every step, it must land on that image.
    #[test]
    fn every_sampler_recovers_the_clean_image_from_exact_predictions() {
        let schedule = NoiseSchedule::new(ScheduleKind::Cosine, 1000, 1e-4, 0.02);
        let x0 = Tensor::rand([2, 1, 8, 8], (Kind::Double, Device::Cpu)) * 1.6 - 0.8;
        for kind in [SamplerKind::Ddpm, SamplerKind::Ddim, SamplerKind::DpmPlusPlus2M] {
            for eta in [0.0, 1.0] {
                let cfg = SamplerConfig { sampler: kind, steps: 20, eta, ..Default::default() };
                let mut s = build(&cfg, &schedule);
                let mut x = Tensor::randn([2, 1, 8, 8], (Kind::Double, Device::Cpu));
                let ts = s.timesteps().to_vec();
                for (i, &t) in ts.iter().enumerate() {
                    let ab = schedule.alpha_bar(Some(t));
                    let eps = (&x - &x0 * ab.sqrt()) / (1.0 - ab).sqrt();
                    let mut noise = || Tensor::randn([2, 1, 8, 8], (Kind::Double, Device::Cpu));
                    x = s.step(i, &x, &x0, &eps, &mut noise);
                }
                let err = (&x - &x0).abs().max().double_value(&[]);
                assert!(err < 1e-6, "{kind:?} eta {eta}: off by {err}");
            }
        }
    }
}
