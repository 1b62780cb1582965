//! Noise schedules: the betas of the forward process and their cumulative products, computed
//! in f64 exactly as diffusers' DDPMScheduler defines them (checked against its values).

use tch::{Device, Tensor};

difforge_core::choice! {
    pub enum ScheduleKind {
        /// Betas evenly spaced from beta_start to beta_end (DDPM).
        Linear = "linear",
        /// alpha_bar(t) = cos^2(((t/T) + 0.008) / 1.008 * pi/2), betas capped at 0.999
        /// (Nichol & Dhariwal 2021; diffusers' "squaredcos_cap_v2").
        Cosine = "cosine",
        /// Betas along a sigmoid over [-6, 6], scaled into [beta_start, beta_end].
        Sigmoid = "sigmoid",
        /// Square roots of the betas evenly spaced (Stable Diffusion; diffusers' "scaled_linear").
        ScaledLinear = "scaled_linear",
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    pub betas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
}

fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![a];
    }
    (0..n).map(|i| a + (b - a) * i as f64 / (n - 1) as f64).collect()
}

fn cosine_alpha_bar(t: f64) -> f64 {
    ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2)
}

impl NoiseSchedule {
    pub fn new(kind: ScheduleKind, timesteps: usize, beta_start: f64, beta_end: f64) -> NoiseSchedule {
        let betas = match kind {
            ScheduleKind::Linear => linspace(beta_start, beta_end, timesteps),
            ScheduleKind::Cosine => (0..timesteps)
                .map(|i| {
                    // Float division on purpose: integer i / T would zero every beta but the last.
                    let (t1, t2) = (i as f64 / timesteps as f64, (i + 1) as f64 / timesteps as f64);
                    (1.0 - cosine_alpha_bar(t2) / cosine_alpha_bar(t1)).min(0.999)
                })
                .collect(),
            ScheduleKind::ScaledLinear => linspace(beta_start.sqrt(), beta_end.sqrt(), timesteps).into_iter().map(|b| b * b).collect(),
            ScheduleKind::Sigmoid => {
                linspace(-6.0, 6.0, timesteps).into_iter().map(|x| 1.0 / (1.0 + (-x).exp()) * (beta_end - beta_start) + beta_start).collect()
            }
        };
        NoiseSchedule::from_betas(betas)
    }

    fn from_betas(betas: Vec<f64>) -> NoiseSchedule {
        let alphas_cumprod = betas
            .iter()
            .scan(1.0, |acc, b| {
                *acc *= 1.0 - b;
                Some(*acc)
            })
            .collect();
        NoiseSchedule { betas, alphas_cumprod }
    }

    /// The schedule rescaled to zero terminal SNR (Lin et al. 2024; diffusers'
    /// `rescale_betas_zero_snr`): sqrt(alpha_bar) shifted and scaled so that it keeps its first
    /// value and reaches 0 at the last timestep, which then is pure noise. Only v-prediction
    /// can be sampled from it (an epsilon model cannot say what the clean image is at SNR 0).
    pub fn rescaled_to_zero_terminal_snr(&self) -> NoiseSchedule {
        let sqrt: Vec<f64> = self.alphas_cumprod.iter().map(|a| a.sqrt()).collect();
        let (first, last) = (sqrt[0], sqrt[sqrt.len() - 1]);
        let bar: Vec<f64> = sqrt.iter().map(|s| ((s - last) * first / (first - last)).powi(2)).collect();
        let mut betas = vec![1.0 - bar[0]];
        betas.extend(bar.windows(2).map(|w| 1.0 - w[1] / w[0]));
        NoiseSchedule::from_betas(betas)
    }

    pub fn from_config(c: &crate::DiffusionConfig) -> NoiseSchedule {
        let schedule = NoiseSchedule::new(c.schedule, c.timesteps, c.beta_start, c.beta_end);
        if c.zero_terminal_snr {
            schedule.rescaled_to_zero_terminal_snr()
        } else {
            schedule
        }
    }

    pub fn len(&self) -> usize {
        self.betas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    /// alpha_bar at training timestep t; t = None means "before the first step" (clean), 1.0.
    pub fn alpha_bar(&self, t: Option<usize>) -> f64 {
        t.map_or(1.0, |t| self.alphas_cumprod[t])
    }

    /// The EDM noise level sigma = sqrt((1 - alpha_bar) / alpha_bar) at t (x_t / sqrt(alpha_bar)
    /// is the clean image plus noise of this standard deviation).
    pub fn sigma(&self, t: usize) -> f64 {
        let a = self.alphas_cumprod[t];
        ((1.0 - a) / a).sqrt()
    }

    /// Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at t.
    pub fn snr(&self, t: usize) -> f64 {
        let a = self.alphas_cumprod[t];
        a / (1.0 - a)
    }

    /// The forward process's coefficients for a batch of timesteps as (B, 1, 1, 1) float32
    /// tensors: a = sqrt(alpha_bar), s = sqrt(1 - alpha_bar), so that x_t = a x0 + s eps.
    pub fn coefficients(&self, ts: &[usize], device: Device) -> (Tensor, Tensor) {
        let ab: Vec<f32> = ts.iter().map(|&t| self.alphas_cumprod[t] as f32).collect();
        let ab = Tensor::from_slice(&ab).view([ts.len() as i64, 1, 1, 1]).to_device(device);
        (ab.sqrt(), (-&ab + 1.0).sqrt())
    }

    /// The same coefficients at one timestep, as 0-d float64 tensors (sampling steps).
    pub fn coefficients_at(&self, t: usize, device: Device) -> (Tensor, Tensor) {
        let ab = self.alpha_bar(Some(t));
        (Tensor::from(ab.sqrt()).to_device(device), Tensor::from((1.0 - ab).sqrt()).to_device(device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_betas_are_not_zeroed_by_integer_division() {
        let s = NoiseSchedule::new(ScheduleKind::Cosine, 1000, 1e-4, 0.02);
        assert!(s.betas[0] > 0.0 && s.betas[0] < 1e-3, "{}", s.betas[0]);
        assert!(s.betas.iter().all(|&b| b > 0.0));
        assert_eq!(s.betas[999], 0.999);
        assert!(s.alphas_cumprod.windows(2).all(|w| w[1] < w[0]));
    }

    #[test]
    fn the_run_config_switches_the_zero_terminal_snr_rescale() {
        let c = crate::DiffusionConfig { schedule: ScheduleKind::ScaledLinear, beta_start: 0.00085, beta_end: 0.012, ..Default::default() };
        let plain = NoiseSchedule::from_config(&c);
        let zero = NoiseSchedule::from_config(&crate::DiffusionConfig { zero_terminal_snr: true, ..c });
        assert!(plain.alpha_bar(Some(999)) > 1e-3);
        assert!(zero.alpha_bar(Some(999)).abs() < 1e-12);
        assert_eq!(zero, plain.rescaled_to_zero_terminal_snr());
    }

    #[test]
    fn scaled_linear_and_zero_terminal_snr_match_diffusers() {
        // Values printed by diffusers 0.35.2: DDIMScheduler(beta_start=0.00085, beta_end=0.012,
        // beta_schedule="scaled_linear"[, rescale_betas_zero_snr=True]).alphas_cumprod[[0, 500, 999]].
        let s = NoiseSchedule::new(ScheduleKind::ScaledLinear, 1000, 0.00085, 0.012);
        for (t, want) in [(0, 0.99915), (500, 0.276332_f64), (999, 0.0046601)] {
            assert!((s.alphas_cumprod[t] - want).abs() < 1e-5 * want.max(0.1), "t {t}: {} vs {want}", s.alphas_cumprod[t]);
        }
        let z = s.rescaled_to_zero_terminal_snr();
        assert!((z.alphas_cumprod[0] - 0.99915).abs() < 1e-6 && z.alphas_cumprod[999].abs() < 1e-12);
        assert!((z.alphas_cumprod[500] - 0.241019).abs() < 2e-6, "{}", z.alphas_cumprod[500]);
    }

    #[test]
    fn linear_ends_at_its_bounds() {
        let s = NoiseSchedule::new(ScheduleKind::Linear, 1000, 1e-4, 0.02);
        assert!((s.betas[0] - 1e-4).abs() < 1e-15 && (s.betas[999] - 0.02).abs() < 1e-15);
    }
}
