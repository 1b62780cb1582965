//! PNDM's pseudo linear multistep steps (PLMS, Liu et al. 2022) as diffusers' `PNDMScheduler`
//! takes them with `skip_prk_steps` (Stable Diffusion 1.x's setting): Adams-Bashforth
//! combinations (orders 1 to 4) of the last noise estimates, each moved by the DDIM transfer.
//! Instead of the Runge-Kutta warm-up, the first step is repeated as a Heun step: the model is
//! evaluated a second time at the second timestep, and the first step is redone from its start
//! with the mean of both estimates. So `steps` steps evaluate the model `steps + 1` times.
//!
//! As in diffusers, each step goes from t to t - train_steps / steps (integer division), which
//! is the next timestep with leading spacing but can be one off with the other spacings.

use super::euler::nonzero_alpha_bar;
use super::{Sampler, SamplerInfo};
use crate::config::SamplerConfig;
use crate::schedule::NoiseSchedule;
use tch::Tensor;

pub(super) const INFO: SamplerInfo = SamplerInfo {
    name: "pndm",
    aliases: &["plms"],
    about: "PNDM's linear multistep steps (PLMS) as Stable Diffusion 1.x uses them (deterministic)",
    stochastic: false,
    build,
};

fn build(cfg: &SamplerConfig, schedule: &NoiseSchedule, ts: Vec<usize>) -> Box<dyn Sampler> {
    // As DDIM: without set_alpha_to_one the last step lands on the first training timestep's
    // alpha_bar (diffusers' `final_alpha_cumprod`).
    let final_alpha_bar = if cfg.set_alpha_to_one { 1.0 } else { schedule.alpha_bar(Some(0)) };
    Box::new(Pndm::new(schedule, ts, final_alpha_bar))
}

pub struct Pndm {
    /// The model's timesteps: the sampling timesteps with the second one twice.
    ts: Vec<usize>,
    /// alpha_bar where each step starts and where it lands.
    from: Vec<f64>,
    to: Vec<f64>,
    /// The last (up to four) noise estimates the multistep combinations use.
    eps: Vec<Tensor>,
    /// The first step's starting point, for the repeated first step.
    start: Option<Tensor>,
}

impl Pndm {
    /// `ts`: the descending sampling timesteps.
    pub fn new(schedule: &NoiseSchedule, ts: Vec<usize>, final_alpha_bar: f64) -> Pndm {
        let ratio = (schedule.len() / ts.len().max(1)) as i64;
        let model_ts: Vec<usize> = match ts.as_slice() {
            [first, second, rest @ ..] => [*first, *second, *second].into_iter().chain(rest.iter().copied()).collect(),
            _ => ts,
        };
        // A zero-terminal-SNR schedule's alpha_bar of 0 made positive as the Euler samplers do:
        // the transfer divides by it.
        let ab = |t: i64| if t < 0 { final_alpha_bar } else { nonzero_alpha_bar(schedule, (t as usize).min(schedule.len() - 1)) };
        let (mut from, mut to) = (Vec::new(), Vec::new());
        for (i, &t) in model_ts.iter().enumerate() {
            let t = t as i64;
            // The repeated first step starts again one stride above the second timestep.
            let (start, end) = if i == 1 { (t + ratio, t) } else { (t, t - ratio) };
            from.push(ab(start));
            to.push(ab(end));
        }
        Pndm { ts: model_ts, from, to, eps: Vec::new(), start: None }
    }

    /// The noise estimate step `i` moves with, after taking in the model's `eps`.
    fn combined(&mut self, i: usize, eps: &Tensor) -> Tensor {
        if i == 1 {
            // The repeated first step: the mean of its two estimates (not kept for later steps).
            return self.eps.last().map_or_else(|| eps.shallow_clone(), |first| (eps + first) / 2.0);
        }
        if self.eps.len() == 4 {
            let _ = self.eps.remove(0);
        }
        self.eps.push(eps.shallow_clone());
        let e = |k: usize| &self.eps[self.eps.len() - 1 - k];
        match self.eps.len() {
            1 => e(0).shallow_clone(),
            2 => (e(0) * 3.0 - e(1)) / 2.0,
            3 => (e(0) * 23.0 - e(1) * 16.0 + e(2) * 5.0) / 12.0,
            _ => (e(0) * 55.0 - e(1) * 59.0 + e(2) * 37.0 - e(3) * 9.0) / 24.0,
        }
    }
}

/// The DDIM transfer of `x` from alpha_bar `ab` to `ab_prev` along `eps`, in diffusers' form.
fn transfer(x: &Tensor, ab: f64, ab_prev: f64, eps: &Tensor) -> Tensor {
    let denom = ab * (1.0 - ab_prev).sqrt() + (ab * (1.0 - ab) * ab_prev).sqrt();
    x * (ab_prev / ab).sqrt() - eps * ((ab_prev - ab) / denom)
}

impl Sampler for Pndm {
    fn timesteps(&self) -> &[usize] {
        &self.ts
    }

    fn step(&mut self, i: usize, x: &Tensor, _x0: &Tensor, eps: &Tensor, _noise: &mut dyn FnMut() -> Tensor) -> Tensor {
        if i == 0 {
            self.eps.clear();
            self.start = Some(x.shallow_clone());
        }
        let e = self.combined(i, eps);
        // The repeated first step starts from the first step's start, not from the x it gave.
        let start = if i == 1 { self.start.take() } else { None };
        transfer(start.as_ref().unwrap_or(x), self.from[i], self.to[i], &e)
    }
}
