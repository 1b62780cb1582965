//! Euler ancestral (k-diffusion's `sample_euler_ancestral`, diffusers'
//! `EulerAncestralDiscreteScheduler`): each step splits the way from sigma to the next sigma into
//! a deterministic Euler step down to sigma_down and fresh noise of standard deviation sigma_up,
//! with sigma_down^2 + sigma_up^2 = sigma_next^2 (the DDPM posterior's variance, eta = 1).

use super::euler::{from_sigma_space, sigmas, start_scale, to_sigma_space};
use super::{Sampler, SamplerInfo};
use crate::config::{SamplerConfig, Spacing};
use crate::schedule::NoiseSchedule;
use tch::Tensor;

pub(super) const INFO: SamplerInfo = SamplerInfo {
    name: "euler-a",
    aliases: &["euler_a", "euler-ancestral"],
    about: "Euler ancestral: Euler steps with fresh noise at each (stochastic)",
    stochastic: true,
    build,
};

fn build(cfg: &SamplerConfig, schedule: &NoiseSchedule, ts: Vec<usize>) -> Box<dyn Sampler> {
    Box::new(EulerAncestral::new(schedule, ts, cfg.spacing))
}

pub struct EulerAncestral {
    ts: Vec<usize>,
    sigma: Vec<f64>,
    sigma_next: Vec<f64>,
    spacing: Spacing,
}

impl EulerAncestral {
    pub fn new(schedule: &NoiseSchedule, ts: Vec<usize>, spacing: Spacing) -> EulerAncestral {
        let (sigma, sigma_next) = sigmas(schedule, &ts);
        EulerAncestral { ts, sigma, sigma_next, spacing }
    }
}

/// (sigma_down, sigma_up) for a step from `from` to `to`.
fn split(from: f64, to: f64) -> (f64, f64) {
    let up = (to * to * (from * from - to * to) / (from * from)).max(0.0).sqrt();
    ((to * to - up * up).max(0.0).sqrt(), up)
}

impl Sampler for EulerAncestral {
    fn timesteps(&self) -> &[usize] {
        &self.ts
    }

    fn start_scale(&self) -> f64 {
        self.sigma.first().map_or(1.0, |&s| start_scale(self.spacing, s))
    }

    fn step(&mut self, i: usize, x: &Tensor, x0: &Tensor, _eps: &Tensor, noise: &mut dyn FnMut() -> Tensor) -> Tensor {
        let (sigma, sigma_next) = (self.sigma[i], self.sigma_next[i]);
        let (down, up) = split(sigma, sigma_next);
        let x = to_sigma_space(x, sigma);
        let d = (&x - x0) / sigma;
        let x_next = &x + d * (down - sigma);
        // The last step (to sigma 0) adds none; diffusers draws it anyway, scaled by 0.
        let x_next = if up > 0.0 { x_next + noise() * up } else { x_next };
        from_sigma_space(&x_next, sigma_next)
    }
}
