//! A diffusers folder's `scheduler/scheduler_config.json` as difforge's noise schedule,
//! prediction type and sampler defaults: the betas (`scaled_linear` and the others difforge
//! has, `rescale_betas_zero_snr`), `prediction_type`, `timestep_spacing`, `steps_offset`,
//! `set_alpha_to_one`, `clip_sample`, and the sampler its class names.

use crate::error::ModelError;
use difforge_core::{short_number, ConfigError};
use difforge_diffusion::{DiffusionConfig, NoiseSchedule, Prediction, SamplerConfig, SamplerKind, ScheduleKind, Spacing};
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
    /// DPMSolverMultistepScheduler's Karras noise levels.
    #[serde(default)]
    pub use_karras_sigmas: bool,
    /// DPMSolverMultistepScheduler's variant; difforge has "dpmsolver++" of order 2.
    pub algorithm_type: Option<String>,
    pub solver_order: Option<usize>,
}

/// diffusers' schedulers use 1,000; our own configs allow up to this many.
const MAX_TRAIN_TIMESTEPS: usize = 100_000;

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
    /// DDIM as Stable Diffusion 1.x, 2.x and SDXL configure it (their `scheduler_config.json`):
    /// scaled_linear betas from 0.00085 to 0.012, leading spacing with offset 1, no clipping,
    /// the last step landing on the first timestep's alpha_bar.
    pub fn stable_diffusion(prediction_type: &str) -> SchedulerConfig {
        SchedulerConfig {
            class_name: "DDIMScheduler".into(),
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: "scaled_linear".into(),
            prediction_type: prediction_type.into(),
            timestep_spacing: "leading".into(),
            steps_offset: 1,
            set_alpha_to_one: false,
            clip_sample: Some(false),
            rescale_betas_zero_snr: false,
            trained_betas: None,
            use_karras_sigmas: false,
            algorithm_type: None,
            solver_order: None,
        }
    }

    pub fn read(dir: &Path) -> Result<SchedulerConfig, ModelError> {
        let path = dir.join("scheduler_config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::checkpoint(&path, e.to_string()))?;
        let config: SchedulerConfig = serde_json::from_str(&text).map_err(|e| ModelError::checkpoint(&path, format!("not a valid scheduler config: {e}")))?;
        config.check().map_err(|e| ModelError::Config(e.with_origin(path.display().to_string())))?;
        Ok(config)
    }

    /// Refuses, before a schedule is built, more timesteps than any model uses (each holds a
    /// tensor row) and betas a diffusion cannot have: outside (0, 1), or not increasing
    /// (`beta_start 0.5, beta_end 2.0` sampled an all-black image).
    fn check(&self) -> Result<(), ConfigError> {
        if !(2..=MAX_TRAIN_TIMESTEPS).contains(&self.num_train_timesteps) {
            return Err(ConfigError::new("num_train_timesteps", self.num_train_timesteps, format!("2..={MAX_TRAIN_TIMESTEPS}")));
        }
        if self.steps_offset >= self.num_train_timesteps {
            return Err(ConfigError::new("steps_offset", self.steps_offset, format!("below num_train_timesteps ({})", self.num_train_timesteps)));
        }
        for (field, beta) in [("beta_start", self.beta_start), ("beta_end", self.beta_end)] {
            if !(beta.is_finite() && beta > 0.0 && beta < 1.0) {
                return Err(ConfigError::new(field, short_number(beta), "a number between 0 and 1 (exclusive)"));
            }
        }
        if self.beta_start >= self.beta_end {
            return Err(ConfigError::new("beta_end", self.beta_end, format!("more than beta_start ({}): betas increase", self.beta_start)));
        }
        Ok(())
    }

    /// The schedule, prediction and sampler; `path` names the file in errors.
    pub fn scheduling(&self, path: &Path) -> Result<Scheduling, ModelError> {
        if self.trained_betas.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(invalid(path, "trained_betas", "[...]", "null"));
        }
        let kind = self.schedule_kind(path)?;
        if self.num_train_timesteps < 2 {
            return Err(invalid(path, "num_train_timesteps", &self.num_train_timesteps.to_string(), "at least 2"));
        }
        let mut schedule = NoiseSchedule::new(kind, self.num_train_timesteps, self.beta_start, self.beta_end);
        if self.rescale_betas_zero_snr {
            schedule = schedule.rescaled_to_zero_terminal_snr();
        }
        let prediction = self.prediction(path)?;
        let spacing = match self.timestep_spacing.as_str() {
            "leading" => Spacing::Leading,
            "trailing" => Spacing::Trailing,
            "linspace" => Spacing::Linspace,
            other => return Err(invalid(path, "timestep_spacing", other, "\"leading\", \"trailing\" or \"linspace\"")),
        };
        let (name, substitute) = sampler_for(&self.class_name, self.use_karras_sigmas);
        let substitute = substitute.or_else(|| inexact(name, spacing, prediction)).or_else(|| self.other_dpm_solver(name));
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

    fn schedule_kind(&self, path: &Path) -> Result<ScheduleKind, ModelError> {
        Ok(match self.beta_schedule.as_str() {
            "scaled_linear" => ScheduleKind::ScaledLinear,
            "linear" => ScheduleKind::Linear,
            "squaredcos_cap_v2" => ScheduleKind::Cosine,
            "sigmoid" => ScheduleKind::Sigmoid,
            other => return Err(invalid(path, "beta_schedule", other, "\"scaled_linear\", \"linear\", \"squaredcos_cap_v2\" or \"sigmoid\"")),
        })
    }

    fn prediction(&self, path: &Path) -> Result<Prediction, ModelError> {
        Ok(match self.prediction_type.as_str() {
            "epsilon" => Prediction::Epsilon,
            "v_prediction" => Prediction::V,
            "sample" => Prediction::X0,
            other => return Err(invalid(path, "prediction_type", other, "\"epsilon\", \"v_prediction\" or \"sample\"")),
        })
    }

    /// The run's `[diffusion]` section that diffuses as this scheduler: its betas, timesteps and
    /// prediction type (the training settings keep their defaults).
    pub fn diffusion_config(&self, path: &Path) -> Result<DiffusionConfig, ModelError> {
        self.scheduling(path)?;
        Ok(DiffusionConfig {
            schedule: self.schedule_kind(path)?,
            timesteps: self.num_train_timesteps,
            beta_start: self.beta_start,
            beta_end: self.beta_end,
            prediction: self.prediction(path)?,
            zero_terminal_snr: self.rescale_betas_zero_snr,
            ..DiffusionConfig::default()
        })
    }

    /// A note when the folder asks for a DPM-Solver other than difforge's (SDE, first or third
    /// order), which then stands in.
    fn other_dpm_solver(&self, sampler: &str) -> Option<String> {
        let algorithm = self.algorithm_type.as_deref().unwrap_or("dpmsolver++");
        let order = self.solver_order.unwrap_or(2);
        (sampler.starts_with("dpm++2m") && (algorithm != "dpmsolver++" || order != 2))
            .then(|| format!("the folder's DPM-Solver is {algorithm} of order {order}; difforge's DPM-Solver++ of order 2 stands in"))
    }
}

/// difforge's sampler for a diffusers scheduler class, and a note when it only stands in.
fn sampler_for(class: &str, karras: bool) -> (&'static str, Option<String>) {
    match class {
        "DDIMScheduler" => ("ddim", None),
        "DDPMScheduler" => ("ddpm", None),
        "DPMSolverMultistepScheduler" if karras => ("dpm++2m-karras", None),
        "DPMSolverMultistepScheduler" => ("dpm++2m", None),
        "EulerDiscreteScheduler" => ("euler", None),
        "EulerAncestralDiscreteScheduler" => ("euler-a", None),
        // As Stable Diffusion configures it (`skip_prk_steps`): PLMS without the Runge-Kutta warm-up.
        "PNDMScheduler" => ("pndm", None),
        other => ("ddim", Some(format!("the folder's scheduler {other} is not in difforge yet; DDIM with its settings stands in (choose with --sampler)"))),
    }
}

/// A note where difforge's sampler steps differently from the diffusers scheduler it maps.
fn inexact(sampler: &str, spacing: Spacing, prediction: Prediction) -> Option<String> {
    match (sampler, spacing, prediction) {
        ("euler" | "euler-a", Spacing::Linspace, _) => {
            Some("diffusers' Euler schedulers take fractional timesteps with linspace spacing; difforge rounds them".into())
        }
        ("pndm", _, Prediction::V) => Some("diffusers' PNDM combines the v-predictions across steps; difforge the noise estimates".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheduling(class: &str, spacing: &str, prediction: &str) -> Scheduling {
        let json = format!(
            r#"{{"_class_name": "{class}", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                "timestep_spacing": "{spacing}", "steps_offset": 1, "prediction_type": "{prediction}", "set_alpha_to_one": false}}"#
        );
        let cfg: SchedulerConfig = serde_json::from_str(&json).unwrap();
        cfg.scheduling(Path::new("scheduler_config.json")).unwrap()
    }

    #[test]
    fn stable_diffusions_schedulers_map_to_their_samplers() {
        for (class, sampler) in [("EulerDiscreteScheduler", "euler"), ("EulerAncestralDiscreteScheduler", "euler-a"), ("PNDMScheduler", "pndm")] {
            let s = scheduling(class, "leading", "epsilon");
            assert_eq!((s.sampler.sampler.name(), s.sampler.spacing, s.sampler.steps_offset), (sampler, Spacing::Leading, 1), "{class}");
            assert!(s.substitute.is_none() && !s.sampler.clip_x0, "{class}");
        }
        assert!(scheduling("EulerDiscreteScheduler", "linspace", "epsilon").substitute.is_some_and(|n| n.contains("fractional")));
        assert!(scheduling("PNDMScheduler", "leading", "v_prediction").substitute.is_some_and(|n| n.contains("v-predictions")));
        assert!(scheduling("LMSDiscreteScheduler", "leading", "epsilon").substitute.is_some_and(|n| n.contains("DDIM")));
    }

    #[test]
    fn dpm_solver_configs_choose_karras_or_say_what_stands_in() {
        let dpm = |extra: &str| {
            let json = format!(r#"{{"_class_name": "DPMSolverMultistepScheduler", "beta_schedule": "scaled_linear"{extra}}}"#);
            serde_json::from_str::<SchedulerConfig>(&json).unwrap().scheduling(Path::new("scheduler_config.json")).unwrap()
        };
        let plain = dpm("");
        assert_eq!((plain.sampler.sampler.name(), plain.substitute), ("dpm++2m", None));
        let karras = dpm(r#", "use_karras_sigmas": true, "algorithm_type": "dpmsolver++", "solver_order": 2"#);
        assert_eq!((karras.sampler.sampler.name(), karras.substitute), ("dpm++2m-karras", None));
        let sde = dpm(r#", "algorithm_type": "sde-dpmsolver++""#);
        assert!(sde.substitute.is_some_and(|n| n.contains("sde-dpmsolver++ of order 2")));
        assert!(dpm(r#", "solver_order": 3"#).substitute.is_some_and(|n| n.contains("order 3")));
    }
}
