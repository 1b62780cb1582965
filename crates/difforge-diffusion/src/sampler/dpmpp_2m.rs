//! DPM-Solver++(2M) (Lu et al. 2022): a second-order multistep solver of the probability-flow
//! ODE in data-prediction form, in log-SNR time lambda = -log(sigma). It steps as diffusers'
//! `DPMSolverMultistepScheduler` with its defaults (dpmsolver++, midpoint, order 2, the last step
//! first order down to sigma 0), on the scheduler's own timesteps, and optionally on Karras et
//! al.'s noise levels (`use_karras_sigmas`, webui's "DPM++ 2M Karras").

use super::euler::nonzero_alpha_bar;
use super::{sampling_timesteps, Sampler, SamplerInfo};
use crate::config::{SamplerConfig, Spacing};
use crate::schedule::NoiseSchedule;
use tch::Tensor;

pub(super) const INFO: SamplerInfo = SamplerInfo {
    name: "dpm++2m",
    aliases: &["dpmpp2m"],
    about: "DPM-Solver++(2M), a second-order multistep ODE solver (deterministic)",
    stochastic: false,
    build,
};

pub(super) const INFO_KARRAS: SamplerInfo = SamplerInfo {
    name: "dpm++2m-karras",
    aliases: &["dpmpp2m-karras", "dpm++2m_karras"],
    about: "DPM-Solver++(2M) on Karras et al.'s noise levels (rho 7), webui's \"DPM++ 2M Karras\" (deterministic)",
    stochastic: false,
    build: build_karras,
};

fn build(cfg: &SamplerConfig, schedule: &NoiseSchedule, _ts: Vec<usize>) -> Box<dyn Sampler> {
    let ts = timesteps(schedule.len(), cfg.steps, cfg.spacing, cfg.steps_offset);
    let sigmas = ts.iter().map(|&t| sigma(schedule, t)).collect();
    Box::new(DpmPlusPlus2M::new(ts, sigmas))
}

fn build_karras(cfg: &SamplerConfig, schedule: &NoiseSchedule, _ts: Vec<usize>) -> Box<dyn Sampler> {
    let sigmas = karras_sigmas(schedule, cfg.steps.clamp(1, schedule.len()));
    let log_sigmas: Vec<f64> = (0..schedule.len()).map(|t| sigma(schedule, t).ln()).collect();
    // The model sees the nearest training timestep; the solver keeps the exact noise level.
    let ts = sigmas.iter().map(|&s| timestep_of(s, &log_sigmas).round_ties_even() as usize).collect();
    Box::new(DpmPlusPlus2M::new(ts, sigmas))
}

/// The noise level at t, with a zero-terminal-SNR schedule's last alpha_bar floored as diffusers
/// floors it (an infinite sigma would make the first step's log-SNR infinite).
fn sigma(schedule: &NoiseSchedule, t: usize) -> f64 {
    let ab = nonzero_alpha_bar(schedule, t);
    ((1.0 - ab) / ab).sqrt()
}

/// The scheduler's timesteps: for leading and linspace spacing it divides the schedule into
/// `steps + 1` parts and drops the last (t = 0), unlike DDIM's; trailing is DDIM's.
pub(super) fn timesteps(train_steps: usize, steps: usize, spacing: Spacing, steps_offset: usize) -> Vec<usize> {
    let steps = steps.clamp(1, train_steps);
    match spacing {
        Spacing::Trailing => sampling_timesteps(train_steps, steps, spacing, 0),
        Spacing::Leading => {
            let ratio = train_steps / (steps + 1);
            (1..=steps).rev().map(|i| (i * ratio + steps_offset).min(train_steps - 1)).collect()
        }
        Spacing::Linspace => {
            let last = (train_steps - 1) as f64;
            // Halves to even, as numpy's round.
            (1..=steps).rev().map(|i| (i as f64 * last / steps as f64).round_ties_even() as usize).collect()
        }
    }
}

/// Karras et al.'s noise levels: `steps` values from the schedule's largest sigma to its
/// smallest, evenly spaced in sigma^(1/7).
fn karras_sigmas(schedule: &NoiseSchedule, steps: usize) -> Vec<f64> {
    const RHO: f64 = 7.0;
    let (lo, hi) = (sigma(schedule, 0).powf(1.0 / RHO), sigma(schedule, schedule.len() - 1).powf(1.0 / RHO));
    let ramp = |i: usize| if steps == 1 { 0.0 } else { i as f64 / (steps - 1) as f64 };
    (0..steps).map(|i| (hi + ramp(i) * (lo - hi)).powf(RHO)).collect()
}

/// The (fractional) training timestep whose noise level is `sigma`: linear interpolation in
/// log sigma between the two neighbouring timesteps, clamped to the schedule's range.
fn timestep_of(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let low = log_sigmas.iter().rposition(|&l| log_sigma >= l).unwrap_or(0).min(log_sigmas.len() - 2);
    let (l, h) = (log_sigmas[low], log_sigmas[low + 1]);
    let w = ((l - log_sigma) / (l - h)).clamp(0.0, 1.0);
    low as f64 + w
}

pub struct DpmPlusPlus2M {
    ts: Vec<usize>,
    /// The noise level of each step, then 0 (the clean image) after the last.
    sigmas: Vec<f64>,
    /// The previous step's data prediction and log-SNR step.
    prev: Option<(Tensor, f64)>,
}

impl DpmPlusPlus2M {
    /// A solver over these timesteps at these noise levels (one per timestep).
    pub fn new(ts: Vec<usize>, mut sigmas: Vec<f64>) -> DpmPlusPlus2M {
        sigmas.push(0.0);
        DpmPlusPlus2M { ts, sigmas, prev: None }
    }
}

impl Sampler for DpmPlusPlus2M {
    fn timesteps(&self) -> &[usize] {
        &self.ts
    }

    fn alpha_bar(&self, i: usize) -> Option<f64> {
        let s = self.sigmas[i];
        Some(1.0 / (s * s + 1.0))
    }

    fn step(&mut self, i: usize, x: &Tensor, x0: &Tensor, _eps: &Tensor, _noise: &mut dyn FnMut() -> Tensor) -> Tensor {
        if i == 0 {
            self.prev = None;
        }
        let (s, s_next) = (self.sigmas[i], self.sigmas[i + 1]);
        if s_next == 0.0 {
            // Last step: the solution at sigma 0 is the data prediction itself.
            self.prev = None;
            return x0.shallow_clone();
        }
        // Variance-preserving coefficients: alpha = 1 / sqrt(sigma^2 + 1), std = sigma * alpha.
        let (alpha, alpha_next) = ((s * s + 1.0).sqrt().recip(), (s_next * s_next + 1.0).sqrt().recip());
        let h = s.ln() - s_next.ln();
        let d = match &self.prev {
            Some((x0_prev, h_prev)) => {
                let r = h_prev / h;
                x0 * (1.0 + 1.0 / (2.0 * r)) - x0_prev * (1.0 / (2.0 * r))
            }
            None => x0.shallow_clone(),
        };
        self.prev = Some((x0.shallow_clone(), h));
        x * (s_next * alpha_next / (s * alpha)) - d * (alpha_next * ((-h).exp() - 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::ScheduleKind;

    #[test]
    fn timesteps_match_diffusers() {
        // diffusers 0.35.2, DPMSolverMultistepScheduler.set_timesteps(7) with each spacing.
        assert_eq!(timesteps(1000, 7, Spacing::Leading, 1), [876, 751, 626, 501, 376, 251, 126]);
        assert_eq!(timesteps(1000, 7, Spacing::Linspace, 0), [999, 856, 714, 571, 428, 285, 143]);
        assert_eq!(timesteps(1000, 10, Spacing::Trailing, 0), [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]);
    }

    #[test]
    fn karras_timesteps_follow_the_noise_levels() {
        let schedule = NoiseSchedule::new(ScheduleKind::ScaledLinear, 1000, 0.00085, 0.012);
        let cfg = SamplerConfig { steps: 5, ..Default::default() };
        let s = build_karras(&cfg, &schedule, vec![]);
        // diffusers 0.35.2, use_karras_sigmas with Stable Diffusion's betas, 5 steps.
        assert_eq!(s.timesteps(), [999, 786, 427, 59, 0]);
        assert!((s.alpha_bar(0).unwrap() - schedule.alpha_bar(Some(999))).abs() < 1e-12);
        // diffusers' sigma at the fourth step, in float32.
        let sigma3 = (1.0 / s.alpha_bar(3).unwrap() - 1.0).sqrt();
        assert!((sigma3 - 0.247_951_72).abs() < 1e-5 * 0.25, "{sigma3}");
    }
}
