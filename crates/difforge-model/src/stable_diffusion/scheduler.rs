//! A diffusers folder's `scheduler/scheduler_config.json` as difforge's noise schedule,
//! prediction type and sampler defaults: the betas (`scaled_linear` and the others difforge
//! has, `rescale_betas_zero_snr`), `prediction_type`, `timestep_spacing`, `steps_offset`,
//! `set_alpha_to_one`, `clip_sample`, and the sampler its class names.

use crate::error::ModelError;
use difforge_diffusion::{NoiseSchedule, Prediction, SamplerConfig, SamplerKind, ScheduleKind, Spacing};
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name")]
    pub class_name: String,
    #[serde(default = "default_train_timesteps")]
    pub num_train_timesteps: usize,
    #[serde(default = "default_beta_start")]
    pub beta_start: f64,
    #[serde(default = "default_beta_end")]
    pub beta_end: f64,
    #[serde(default = "default_beta_schedule")]
    pub beta_schedule: String,
    #[serde(default = "default_prediction")]
    pub prediction_type: String,
    #[serde(default = "default_spacing")]
    pub timestep_spacing: String,
    #[serde(default)]
    pub steps_offset: usize,
    #[serde(default = "default_true")]
    pub set_alpha_to_one: bool,
    pub clip_sample: Option<bool>,
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
    #[serde(default)]
    pub trained_betas: Option<serde_json::Value>,
}

fn default_train_timesteps() -> usize {
    1000
}
fn default_beta_start() -> f64 {
    0.0001
}
fn default_beta_end() -> f64 {
    0.02
}
fn default_beta_schedule() -> String {
    "linear".into()
}
fn default_prediction() -> String {
    "epsilon".into()
}
fn default_spacing() -> String {
    "leading".into()
}
fn default_true() -> bool {
    true
}

/// What sampling needs from a scheduler config.
#[derive(Debug, Clone)]
pub struct Scheduling {
    pub schedule: NoiseSchedule,
    pub prediction: Prediction,
    /// The sampler the config names, with its settings (steps and guidance are the pipeline's).
    pub sampler: SamplerConfig,
    /// Set when the config's scheduler class is not one difforge has: which one stands in.
    pub substitute: Option<String>,
}

fn invalid(path: &Path, field: &str, value: &str, expected: &str) -> ModelError {
    ModelError::checkpoint(path, format!("`{field}` = {value:?} is not supported (expected {expected})"))
}

impl SchedulerConfig {
    pub fn read(dir: &Path) -> Result<SchedulerConfig, ModelError> {
        let path = dir.join("scheduler_config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::checkpoint(&path, e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| ModelError::checkpoint(&path, format!("not a valid scheduler config: {e}")))
    }

    /// The schedule, prediction and sampler; `path` names the file in errors.
    pub fn scheduling(&self, path: &Path) -> Result<Scheduling, ModelError> {
        if self.trained_betas.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(invalid(path, "trained_betas", "[...]", "null"));
        }
        let kind = match self.beta_schedule.as_str() {
            "scaled_linear" => ScheduleKind::ScaledLinear,
            "linear" => ScheduleKind::Linear,
            "squaredcos_cap_v2" => ScheduleKind::Cosine,
            "sigmoid" => ScheduleKind::Sigmoid,
            other => return Err(invalid(path, "beta_schedule", other, "\"scaled_linear\", \"linear\", \"squaredcos_cap_v2\" or \"sigmoid\"")),
        };
        if self.num_train_timesteps < 2 {
            return Err(invalid(path, "num_train_timesteps", &self.num_train_timesteps.to_string(), "at least 2"));
        }
        let mut schedule = NoiseSchedule::new(kind, self.num_train_timesteps, self.beta_start, self.beta_end);
        if self.rescale_betas_zero_snr {
            schedule = schedule.rescaled_to_zero_terminal_snr();
        }
        let prediction = match self.prediction_type.as_str() {
            "epsilon" => Prediction::Epsilon,
            "v_prediction" => Prediction::V,
            "sample" => Prediction::X0,
            other => return Err(invalid(path, "prediction_type", other, "\"epsilon\", \"v_prediction\" or \"sample\"")),
        };
        let spacing = match self.timestep_spacing.as_str() {
            "leading" => Spacing::Leading,
            "trailing" => Spacing::Trailing,
            "linspace" => Spacing::Linspace,
            other => return Err(invalid(path, "timestep_spacing", other, "\"leading\", \"trailing\" or \"linspace\"")),
        };
        let (name, substitute) = sampler_for(&self.class_name);
        let sampler = SamplerConfig {
            sampler: SamplerKind::parse(name).unwrap_or_else(SamplerKind::ddim),
            spacing,
            steps_offset: self.steps_offset,
            set_alpha_to_one: self.set_alpha_to_one,
            // diffusers' DDIM and DDPM clip unless told otherwise; its other schedulers do not.
            clip_x0: self.clip_sample.unwrap_or(matches!(self.class_name.as_str(), "DDIMScheduler" | "DDPMScheduler")),
            eta: 0.0,
            ..SamplerConfig::default()
        };
        Ok(Scheduling { schedule, prediction, sampler, substitute })
    }
}

/// difforge's sampler for a diffusers scheduler class, and a note when it only stands in.
fn sampler_for(class: &str) -> (&'static str, Option<String>) {
    match class {
        "DDIMScheduler" => ("ddim", None),
        "DDPMScheduler" => ("ddpm", None),
        "DPMSolverMultistepScheduler" => ("dpm++2m", None),
        other => ("ddim", Some(format!("the folder's scheduler {other} is not in difforge yet; DDIM with its settings stands in (choose with --sampler)"))),
    }
}
