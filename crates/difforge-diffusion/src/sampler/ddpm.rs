//! DDPM ancestral sampling (Ho et al. 2020): the posterior q(x_prev | x_t, x0) with its "fixed
//! small" variance, generalised to skipped timesteps as diffusers' DDPMScheduler does.

use super::{alpha_bars, Sampler, SamplerInfo};
use crate::config::SamplerConfig;
use crate::schedule::NoiseSchedule;
use tch::Tensor;

pub(super) const INFO: SamplerInfo = SamplerInfo { name: "ddpm", aliases: &[], about: "DDPM ancestral sampling (stochastic)", stochastic: true, build };

fn build(_cfg: &SamplerConfig, schedule: &NoiseSchedule, ts: Vec<usize>) -> Box<dyn Sampler> {
    Box::new(Ddpm::new(schedule, ts))
}

pub struct Ddpm {
    ts: Vec<usize>,
    ab: Vec<f64>,
    ab_next: Vec<f64>,
}

impl Ddpm {
    pub fn new(schedule: &NoiseSchedule, ts: Vec<usize>) -> Ddpm {
        let (ab, ab_next) = alpha_bars(schedule, &ts, 1.0);
        Ddpm { ts, ab, ab_next }
    }
}

impl Sampler for Ddpm {
    fn timesteps(&self) -> &[usize] {
        &self.ts
    }

    fn step(&mut self, i: usize, x: &Tensor, x0: &Tensor, _eps: &Tensor, noise: &mut dyn FnMut() -> Tensor) -> Tensor {
        let (ab, abn) = (self.ab[i], self.ab_next[i]);
        let alpha = ab / abn;
        let beta = 1.0 - alpha;
        let c0 = abn.sqrt() * beta / (1.0 - ab);
        let ct = alpha.sqrt() * (1.0 - abn) / (1.0 - ab);
        let mean = x0 * c0 + x * ct;
        let var = beta * (1.0 - abn) / (1.0 - ab);
        if i + 1 < self.ts.len() && var > 0.0 {
            mean + noise() * var.sqrt()
        } else {
            mean
        }
    }
}
