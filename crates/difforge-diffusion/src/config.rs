//! The `[diffusion]` and `[sample]` sections.

use crate::prediction::Prediction;
use crate::schedule::ScheduleKind;
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
        }
    }
}

impl DiffusionConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(2..=100_000).contains(&self.timesteps) {
            return Err(format!("diffusion.timesteps = {}: expected 2..=100000", self.timesteps));
        }
        if !(self.beta_start > 0.0 && self.beta_start < self.beta_end && self.beta_end < 1.0) {
            return Err(format!(
                "diffusion.beta_start = {} and diffusion.beta_end = {}: expected 0 < beta_start < beta_end < 1",
                self.beta_start, self.beta_end
            ));
        }
        if self.min_snr_gamma < 0.0 {
            return Err(format!("diffusion.min_snr_gamma = {}: expected 0 (off) or a positive number", self.min_snr_gamma));
        }
        if !(0.0..1.0).contains(&self.class_dropout) {
            return Err(format!("diffusion.class_dropout = {}: expected 0.0 <= x < 1.0", self.class_dropout));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SamplerKind {
    #[serde(rename = "ddpm")]
    Ddpm,
    #[serde(rename = "ddim")]
    Ddim,
    #[serde(rename = "dpm++2m")]
    DpmPlusPlus2M,
}

impl SamplerKind {
    pub fn parse(s: &str) -> Option<SamplerKind> {
        match s {
            "ddpm" => Some(SamplerKind::Ddpm),
            "ddim" => Some(SamplerKind::Ddim),
            "dpm++2m" | "dpmpp2m" => Some(SamplerKind::DpmPlusPlus2M),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Ddpm => "ddpm",
            SamplerKind::Ddim => "ddim",
            SamplerKind::DpmPlusPlus2M => "dpm++2m",
        }
    }
}

/// How the sampling timesteps are picked from the training ones (diffusers' names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Spacing {
    /// Evenly spaced, ending at the last training timestep (starts from pure noise).
    Trailing,
    /// Evenly spaced from 0 (DDIM paper); does not reach the noisiest timestep.
    Leading,
}

/// The `[sample]` section: defaults for sampling (training previews, `sample`, evaluation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplerConfig {
    /// "ddpm", "ddim" or "dpm++2m".
    pub sampler: SamplerKind,
    /// Number of denoising steps.
    pub steps: usize,
    /// DDIM noise: 0 is deterministic DDIM, 1 is DDPM-like.
    pub eta: f64,
    /// Classifier-free guidance scale; 1 is no guidance.
    pub guidance: f64,
    pub spacing: Spacing,
    /// Clamp the predicted clean image to [-1, 1] at every step.
    pub clip_x0: bool,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig { sampler: SamplerKind::Ddim, steps: 50, eta: 0.0, guidance: 2.0, spacing: Spacing::Trailing, clip_x0: true }
    }
}

impl SamplerConfig {
    pub fn validate(&self, timesteps: usize) -> Result<(), String> {
        if self.steps == 0 || self.steps > timesteps {
            return Err(format!("sample.steps = {}: expected 1..={timesteps} (diffusion.timesteps)", self.steps));
        }
        if !(0.0..=1.0).contains(&self.eta) {
            return Err(format!("sample.eta = {}: expected 0.0..=1.0", self.eta));
        }
        if !(0.0..=50.0).contains(&self.guidance) {
            return Err(format!("sample.guidance = {}: expected 0.0..=50.0", self.guidance));
        }
        Ok(())
    }
}
