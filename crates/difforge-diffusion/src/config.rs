//! The `[diffusion]` and `[sample]` sections.

use crate::loss::{Loss, LossKind};
use crate::noise::StartNoise;
use crate::prediction::Prediction;
use crate::sampler::SamplerKind;
use crate::schedule::ScheduleKind;
use difforge_core::{check_range, ConfigError};
use rand_distr::Distribution;
use serde::{Deserialize, Serialize};

/// The `[diffusion]` section: the forward process and the training target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiffusionConfig {
    /// Noise schedule: "linear", "cosine" or "sigmoid".
    pub schedule: ScheduleKind,
    /// Number of training timesteps.
    pub timesteps: usize,
    /// First beta of the linear and sigmoid schedules.
    pub beta_start: f64,
    /// Last beta of the linear and sigmoid schedules.
    pub beta_end: f64,
    /// What the network predicts: "epsilon", "v" or "x0".
    pub prediction: Prediction,
    /// Min-SNR-gamma loss weighting (Hang et al. 2023); 0 turns it off. 5 is the paper's value.
    pub min_snr_gamma: f64,
    /// Probability of replacing the class by the null class in training, so that the model also
    /// learns the unconditional prediction that classifier-free guidance needs.
    pub class_dropout: f64,
    /// The loss: "mse" or "huber" (pseudo-Huber with constant `huber_c`).
    pub loss: LossKind,
    pub huber_c: f64,
    /// Offset noise (Guttenberg 2023): each image's noise gets this times one extra normal draw
    /// per channel, so the model learns to change an image's mean brightness; 0 turns it off.
    pub noise_offset: f64,
    /// How training timesteps are drawn: "uniform", or "logit-normal" (SD3's: sigmoid of a
    /// normal with `logit_mean`, `logit_std`, favouring the middle of the schedule).
    pub timestep_sampling: TimestepSampling,
    pub logit_mean: f64,
    pub logit_std: f64,
    /// Rescale the schedule so that its last timestep is pure noise (Lin et al. 2024, diffusers'
    /// `rescale_betas_zero_snr`): the model learns to start from pure noise, so it can make very
    /// dark and very bright images. Needs v-prediction (epsilon says nothing at zero SNR).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub zero_terminal_snr: bool,
}

difforge_core::choice! {
    /// The distribution of training timesteps.
    pub enum TimestepSampling {
        Uniform = "uniform",
        LogitNormal = "logit-normal",
    }
}

impl Default for DiffusionConfig {
    fn default() -> Self {
        DiffusionConfig {
            schedule: ScheduleKind::Cosine,
            timesteps: 1000,
            beta_start: 1e-4,
            beta_end: 0.02,
            prediction: Prediction::Epsilon,
            min_snr_gamma: 0.0,
            class_dropout: 0.1,
            loss: LossKind::Mse,
            huber_c: 0.1,
            noise_offset: 0.0,
            timestep_sampling: TimestepSampling::Uniform,
            logit_mean: 0.0,
            logit_std: 1.0,
            zero_terminal_snr: false,
        }
    }
}

impl DiffusionConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(2..=100_000).contains(&self.timesteps) {
            return Err(ConfigError::new("diffusion.timesteps", self.timesteps, "2..=100000"));
        }
        check_range("diffusion.beta_start", self.beta_start, f64::MIN_POSITIVE, 1.0)?;
        check_range("diffusion.beta_end", self.beta_end, f64::MIN_POSITIVE, 1.0)?;
        if !(self.beta_start < self.beta_end && self.beta_end < 1.0) {
            return Err(ConfigError::new(
                "diffusion.beta_start",
                self.beta_start,
                format!("0 < beta_start < beta_end < 1 (diffusion.beta_end = {})", self.beta_end),
            ));
        }
        check_range("diffusion.min_snr_gamma", self.min_snr_gamma, 0.0, 1e6)?;
        if !(self.class_dropout.is_finite() && (0.0..1.0).contains(&self.class_dropout)) {
            return Err(ConfigError::new("diffusion.class_dropout", self.class_dropout, "0.0 <= x < 1.0"));
        }
        check_range("diffusion.huber_c", self.huber_c, f64::MIN_POSITIVE, 1e3)?;
        check_range("diffusion.noise_offset", self.noise_offset, 0.0, 1.0)?;
        check_range("diffusion.logit_mean", self.logit_mean, -10.0, 10.0)?;
        check_range("diffusion.logit_std", self.logit_std, f64::MIN_POSITIVE, 10.0)?;
        if self.zero_terminal_snr && self.prediction != Prediction::V {
            return Err(ConfigError::new(
                "diffusion.zero_terminal_snr",
                true,
                format!(
                    "false with diffusion.prediction = \"{}\" (at zero SNR only v-prediction has a target; set prediction = \"v\")",
                    self.prediction.name()
                ),
            ));
        }
        Ok(())
    }

    pub fn loss_fn(&self) -> Loss {
        Loss { kind: self.loss, huber_c: self.huber_c }
    }

    /// One training timestep in 0..timesteps from `rng`.
    pub fn draw_timestep(&self, rng: &mut impl rand::Rng) -> usize {
        match self.timestep_sampling {
            TimestepSampling::Uniform => rng.random_range(0..self.timesteps),
            TimestepSampling::LogitNormal => {
                let z: f64 = rand_distr::StandardNormal.sample(rng);
                let u = 1.0 / (1.0 + (-(self.logit_mean + self.logit_std * z)).exp());
                ((u * self.timesteps as f64) as usize).min(self.timesteps - 1)
            }
        }
    }
}

difforge_core::choice! {
    /// How the sampling timesteps are picked from the training ones (diffusers' names).
    pub enum Spacing {
        /// Evenly spaced, ending at the last training timestep (starts from pure noise).
        Trailing = "trailing",
        /// Evenly spaced from 0 (DDIM paper), plus `steps_offset`; does not reach the noisiest
        /// timestep (Stable Diffusion 1.x and 2.x ship with it and offset 1).
        Leading = "leading",
        /// Evenly spaced from the first training timestep to the last, both included, rounded.
        Linspace = "linspace",
    }
}

/// The `[sample]` section: defaults for sampling (training previews, `sample`, evaluation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplerConfig {
    /// A sampler of the registry by name: "ddim", "ddpm", "dpm++2m", "dpm++2m-karras", "euler", "euler-a" or "pndm".
    pub sampler: SamplerKind,
    /// Number of denoising steps.
    pub steps: usize,
    /// DDIM noise: 0 is deterministic DDIM, 1 is DDPM-like (the other samplers ignore it).
    pub eta: f64,
    /// Classifier-free guidance scale; 1 is no guidance.
    pub guidance: f64,
    /// Guidance only where the noise level sigma = sqrt((1 - alpha_bar) / alpha_bar) (the EDM
    /// noise level) lies in (lo, hi]; elsewhere the conditional prediction alone is used
    /// (guidance 1) and the extra unconditional pass is skipped (Kynkaanniemi et al. 2024).
    /// Absent (or [0, inf]): guidance at every step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guidance_interval: Option<[f64; 2]>,
    /// Rescales the guided prediction toward the conditional one's standard deviation, by this
    /// fraction (0: off; Lin et al. 2024 use 0.7), against over-saturation at high scales.
    pub guidance_rescale: f64,
    pub spacing: Spacing,
    /// Added to every timestep of "leading" spacing (diffusers' `steps_offset`).
    pub steps_offset: usize,
    /// Whether the step after the last lands on alpha_bar = 1 (a clean image) or on the first
    /// training timestep's alpha_bar (diffusers' `set_alpha_to_one`; false in Stable
    /// Diffusion's DDIM config). Used by DDIM.
    pub set_alpha_to_one: bool,
    /// Clamp the predicted clean image to [-1, 1] at every step.
    pub clip_x0: bool,
    /// CUDA only: capture the network's forward pass in a CUDA graph at the first step of a
    /// sampling run and replay it at every later one (checked against the eager pass first;
    /// elsewhere, or when the capture fails, sampling runs eagerly with a warning).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cuda_graphs: bool,
    /// Where the starting noise comes from: "portable" (difforge's own per-image generator) or
    /// "torch" (per image `torch.Generator("cpu").manual_seed(seed)`, as diffusers and kohya
    /// draw it: the seed gives their image). Runs on a Stable Diffusion base default to "torch".
    #[serde(skip_serializing_if = "StartNoise::is_portable")]
    pub noise: StartNoise,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            sampler: SamplerKind::ddim(),
            steps: 50,
            eta: 0.0,
            guidance: 2.0,
            guidance_interval: None,
            guidance_rescale: 0.0,
            spacing: Spacing::Trailing,
            steps_offset: 0,
            set_alpha_to_one: true,
            clip_x0: true,
            cuda_graphs: false,
            noise: StartNoise::Portable,
        }
    }
}

impl SamplerConfig {
    /// Range checks, naming the `sample.*` key (callers that took the value from a flag rename
    /// the key, see [`ConfigError::rename_key`]).
    pub fn validate(&self, timesteps: usize) -> Result<(), ConfigError> {
        if self.steps == 0 || self.steps > timesteps {
            return Err(ConfigError::new("sample.steps", self.steps, format!("1..={timesteps} (diffusion.timesteps)")));
        }
        check_range("sample.eta", self.eta, 0.0, 1.0)?;
        check_range("sample.guidance", self.guidance, 0.0, 50.0)?;
        check_range("sample.guidance_rescale", self.guidance_rescale, 0.0, 1.0)?;
        if let Some([lo, hi]) = self.guidance_interval {
            if !(lo.is_finite() && 0.0 <= lo && lo < hi && !hi.is_nan()) {
                return Err(ConfigError::new(
                    "sample.guidance_interval",
                    format!("[{lo}, {hi}]"),
                    "[lo, hi] with 0 <= lo < hi (noise levels sigma; hi may be inf)",
                ));
            }
        }
        Ok(())
    }

    /// Whether guidance applies at noise level `sigma`.
    pub fn guides_at(&self, sigma: f64) -> bool {
        self.guidance_interval.is_none_or(|[lo, hi]| lo < sigma && sigma <= hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logit_normal_timesteps_favour_the_middle_and_uniform_ones_do_not() {
        let mut rng = difforge_core::rng_for(1, difforge_core::Stream::Noise, 0);
        let mut share_in_middle = |sampling| {
            let d = DiffusionConfig { timestep_sampling: sampling, ..DiffusionConfig::default() };
            let ts: Vec<usize> = (0..4000).map(|_| d.draw_timestep(&mut rng)).collect();
            assert!(ts.iter().all(|&t| t < 1000));
            ts.iter().filter(|&&t| (250..750).contains(&t)).count() as f64 / 4000.0
        };
        let (uniform, logit) = (share_in_middle(TimestepSampling::Uniform), share_in_middle(TimestepSampling::LogitNormal));
        // P(|z| < ln 3) = 0.73 for the logit-normal; 0.5 for the uniform.
        assert!((uniform - 0.5).abs() < 0.03 && (logit - 0.73).abs() < 0.03, "{uniform} {logit}");
    }
}
