//! DPM-Solver++(2M) (Lu et al. 2022): a second-order multistep solver of the probability-flow
//! ODE in data-prediction form, in log-SNR time lambda = log(alpha / sigma). The first step and
//! the last (to t = 0) are first order, as diffusers does for short schedules.

use super::{alpha_bars, Sampler, SamplerInfo};
use crate::config::SamplerConfig;
use crate::schedule::NoiseSchedule;
use tch::Tensor;

pub(super) const INFO: SamplerInfo = SamplerInfo {
    name: "dpm++2m",
    aliases: &["dpmpp2m"],
    about: "DPM-Solver++(2M), a second-order multistep ODE solver (deterministic)",
    stochastic: false,
    build,
};

fn build(_cfg: &SamplerConfig, schedule: &NoiseSchedule, ts: Vec<usize>) -> Box<dyn Sampler> {
    Box::new(DpmPlusPlus2M::new(schedule, ts))
}

pub struct DpmPlusPlus2M {
    ts: Vec<usize>,
    ab: Vec<f64>,
    ab_next: Vec<f64>,
    prev: Option<(Tensor, f64)>,
}

impl DpmPlusPlus2M {
    pub fn new(schedule: &NoiseSchedule, ts: Vec<usize>) -> DpmPlusPlus2M {
        let (ab, ab_next) = alpha_bars(schedule, &ts, 1.0);
        DpmPlusPlus2M { ts, ab, ab_next, prev: None }
    }
}

fn lambda(ab: f64) -> f64 {
    0.5 * (ab / (1.0 - ab)).ln()
}

impl Sampler for DpmPlusPlus2M {
    fn timesteps(&self) -> &[usize] {
        &self.ts
    }

    fn step(&mut self, i: usize, x: &Tensor, x0: &Tensor, _eps: &Tensor, _noise: &mut dyn FnMut() -> Tensor) -> Tensor {
        if i == 0 {
            self.prev = None;
        }
        let (ab, abn) = (self.ab[i], self.ab_next[i]);
        if abn >= 1.0 {
            // Last step: sigma_next = 0, the solution is the data prediction itself.
            self.prev = None;
            return x0.shallow_clone();
        }
        let (l, ln) = (lambda(ab), lambda(abn));
        let h = ln - l;
        let (sigma, sigma_n, alpha_n) = ((1.0 - ab).sqrt(), (1.0 - abn).sqrt(), abn.sqrt());
        let d = match &self.prev {
            Some((x0_prev, h_prev)) => {
                let r = h_prev / h;
                x0 * (1.0 + 1.0 / (2.0 * r)) - x0_prev * (1.0 / (2.0 * r))
            }
            None => x0.shallow_clone(),
        };
        self.prev = Some((x0.shallow_clone(), h));
        x * (sigma_n / sigma) - d * (alpha_n * ((-h).exp() - 1.0))
    }
}
