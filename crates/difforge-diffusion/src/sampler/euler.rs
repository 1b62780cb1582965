//! Euler (Karras et al. 2022, diffusers' `EulerDiscreteScheduler`): one Euler step of the
//! probability-flow ODE in sigma space, x_sigma = x0 + sigma * eps, with sigma =
//! sqrt((1 - alpha_bar) / alpha_bar), down to sigma = 0 after the last step. diffusers' defaults:
//! linear interpolation at integer timesteps, no Karras sigmas, no churn.

use super::{Sampler, SamplerInfo};
use crate::config::{SamplerConfig, Spacing};
use crate::schedule::NoiseSchedule;
use tch::Tensor;

pub(super) const INFO: SamplerInfo =
    SamplerInfo { name: "euler", aliases: &[], about: "Euler steps of the probability-flow ODE in sigma space (deterministic)", stochastic: false, build };

fn build(cfg: &SamplerConfig, schedule: &NoiseSchedule, ts: Vec<usize>) -> Box<dyn Sampler> {
    Box::new(Euler::new(schedule, ts, cfg.spacing))
}

/// alpha_bar at t, where a zero-terminal-SNR schedule's last alpha_bar of 0 (an infinite sigma)
/// becomes 2^-24, as in diffusers' Euler schedulers (the smallest positive float16).
pub(super) fn nonzero_alpha_bar(schedule: &NoiseSchedule, t: usize) -> f64 {
    let ab = schedule.alpha_bar(Some(t));
    if ab > 0.0 {
        ab
    } else {
        1.0 / 16_777_216.0
    }
}

/// The noise level of each sampling timestep and of the one after it (0 after the last).
pub(super) fn sigmas(schedule: &NoiseSchedule, ts: &[usize]) -> (Vec<f64>, Vec<f64>) {
    let sigma = |t: usize| {
        let ab = nonzero_alpha_bar(schedule, t);
        ((1.0 - ab) / ab).sqrt()
    };
    let cur: Vec<f64> = ts.iter().map(|&t| sigma(t)).collect();
    let next = (0..ts.len()).map(|i| ts.get(i + 1).map_or(0.0, |&t| sigma(t))).collect();
    (cur, next)
}

/// x_t (variance preserving) as x_sigma: x_t * sqrt(sigma^2 + 1), since sqrt(alpha_bar) =
/// 1 / sqrt(sigma^2 + 1).
pub(super) fn to_sigma_space(x: &Tensor, sigma: f64) -> Tensor {
    x * (sigma * sigma + 1.0).sqrt()
}

/// x_sigma back to x_t.
pub(super) fn from_sigma_space(x: &Tensor, sigma: f64) -> Tensor {
    x / (sigma * sigma + 1.0).sqrt()
}

/// diffusers starts the Euler schedulers from `init_noise_sigma` * noise in sigma space:
/// sqrt(sigma_max^2 + 1) with leading spacing (x_t = noise), but sigma_max with trailing and
/// linspace (as k-diffusion does), which is x_t = noise * sigma_max / sqrt(sigma_max^2 + 1).
pub(super) fn start_scale(spacing: Spacing, sigma_max: f64) -> f64 {
    match spacing {
        Spacing::Leading => 1.0,
        Spacing::Trailing | Spacing::Linspace => sigma_max / (sigma_max * sigma_max + 1.0).sqrt(),
    }
}

pub struct Euler {
    ts: Vec<usize>,
    sigma: Vec<f64>,
    sigma_next: Vec<f64>,
    spacing: Spacing,
}

impl Euler {
    pub fn new(schedule: &NoiseSchedule, ts: Vec<usize>, spacing: Spacing) -> Euler {
        let (sigma, sigma_next) = sigmas(schedule, &ts);
        Euler { ts, sigma, sigma_next, spacing }
    }
}

impl Sampler for Euler {
    fn timesteps(&self) -> &[usize] {
        &self.ts
    }

    fn start_scale(&self) -> f64 {
        self.sigma.first().map_or(1.0, |&s| start_scale(self.spacing, s))
    }

    fn step(&mut self, i: usize, x: &Tensor, x0: &Tensor, _eps: &Tensor, _noise: &mut dyn FnMut() -> Tensor) -> Tensor {
        let (sigma, sigma_next) = (self.sigma[i], self.sigma_next[i]);
        let x = to_sigma_space(x, sigma);
        // The ODE's derivative dx/dsigma is the noise that x_sigma carries over x0.
        let d = (&x - x0) / sigma;
        from_sigma_space(&(&x + d * (sigma_next - sigma)), sigma_next)
    }
}
