//! DDIM (Song et al. 2021) with eta: eta = 0 is deterministic, eta = 1 matches DDPM's variance.

use super::{alpha_bars, Sampler, SamplerInfo};
use crate::config::SamplerConfig;
use crate::schedule::NoiseSchedule;
use tch::Tensor;

pub(super) const INFO: SamplerInfo =
    SamplerInfo { name: "ddim", aliases: &[], about: "DDIM; deterministic with eta 0, DDPM-like noise with eta 1", stochastic: false, build };

fn build(cfg: &SamplerConfig, schedule: &NoiseSchedule, ts: Vec<usize>) -> Box<dyn Sampler> {
    // Without set_alpha_to_one the last step lands on the first training timestep's alpha_bar
    // (diffusers' `final_alpha_cumprod`), not on the clean image.
    let final_alpha_bar = if cfg.set_alpha_to_one { 1.0 } else { schedule.alpha_bar(Some(0)) };
    Box::new(Ddim::new(schedule, ts, cfg.eta, final_alpha_bar))
}

pub struct Ddim {
    ts: Vec<usize>,
    ab: Vec<f64>,
    ab_next: Vec<f64>,
    eta: f64,
}

impl Ddim {
    pub fn new(schedule: &NoiseSchedule, ts: Vec<usize>, eta: f64, final_alpha_bar: f64) -> Ddim {
        let (ab, ab_next) = alpha_bars(schedule, &ts, final_alpha_bar);
        Ddim { ts, ab, ab_next, eta }
    }
}

impl Sampler for Ddim {
    fn timesteps(&self) -> &[usize] {
        &self.ts
    }

    fn step(&mut self, i: usize, _x: &Tensor, x0: &Tensor, eps: &Tensor, noise: &mut dyn FnMut() -> Tensor) -> Tensor {
        let (ab, abn) = (self.ab[i], self.ab_next[i]);
        let sigma = self.eta * ((1.0 - abn) / (1.0 - ab)).sqrt() * (1.0 - ab / abn).sqrt();
        let dir = (1.0 - abn - sigma * sigma).max(0.0).sqrt();
        let x_next = x0 * abn.sqrt() + eps * dir;
        if sigma > 0.0 {
            x_next + noise() * sigma
        } else {
            x_next
        }
    }
}
