//! A folder's `scheduler/scheduler_config.json` for diffusers' `FlowMatchEulerDiscreteScheduler`
//! (Stable Diffusion 3 and 3.5) as difforge's flow-matching schedule, with every option difforge
//! does not compute refused by name; and the pipeline's `mu` for resolution-dependent shifting.

use crate::error::ModelError;
use difforge_core::{short_number, ConfigError};
use difforge_diffusion::flow::FlowMatchConfig;
use serde::Deserialize;
use std::path::Path;

/// The scheduler class this reads.
pub const FLOW_MATCH_CLASS: &str = "FlowMatchEulerDiscreteScheduler";

/// The most training timesteps a config may name (diffusers' SD3 uses 1,000).
const MAX_TRAIN_TIMESTEPS: usize = 100_000;

/// The config as diffusers writes it; absent keys take diffusers' defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct FlowSchedulerConfig {
    #[serde(rename = "_class_name")]
    pub class_name: String,
    pub num_train_timesteps: usize,
    pub shift: f64,
    pub use_dynamic_shifting: bool,
    pub base_shift: f64,
    pub max_shift: f64,
    pub base_image_seq_len: usize,
    pub max_image_seq_len: usize,
    pub shift_terminal: Option<f64>,
    pub invert_sigmas: bool,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    pub time_shift_type: String,
    pub stochastic_sampling: bool,
}

impl Default for FlowSchedulerConfig {
    fn default() -> Self {
        FlowSchedulerConfig {
            class_name: FLOW_MATCH_CLASS.into(),
            num_train_timesteps: 1000,
            shift: 1.0,
            use_dynamic_shifting: false,
            base_shift: 0.5,
            max_shift: 1.15,
            base_image_seq_len: 256,
            max_image_seq_len: 4096,
            shift_terminal: None,
            invert_sigmas: false,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            time_shift_type: "exponential".into(),
            stochastic_sampling: false,
        }
    }
}

impl FlowSchedulerConfig {
    /// Reads and checks `dir/scheduler_config.json`; errors name the file and the field.
    pub fn read(dir: &Path) -> Result<FlowSchedulerConfig, ModelError> {
        let path = dir.join("scheduler_config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::checkpoint(&path, e.to_string()))?;
        FlowSchedulerConfig::parse(&text).map_err(|e| match e {
            Parse::Json(why) => ModelError::checkpoint(&path, format!("not a valid scheduler config: {why}")),
            Parse::Field(e) => ModelError::Config(e.with_origin(path.display().to_string())),
        })
    }

    fn parse(text: &str) -> Result<FlowSchedulerConfig, Parse> {
        let config: FlowSchedulerConfig = serde_json::from_str(text).map_err(|e| Parse::Json(e.to_string()))?;
        config.check().map_err(Parse::Field)?;
        Ok(config)
    }

    /// Ranges, and the options whose schedules difforge does not compute.
    fn check(&self) -> Result<(), ConfigError> {
        if self.class_name != FLOW_MATCH_CLASS {
            return Err(ConfigError::new("_class_name", &self.class_name, format!("\"{FLOW_MATCH_CLASS}\"")));
        }
        if !(2..=MAX_TRAIN_TIMESTEPS).contains(&self.num_train_timesteps) {
            return Err(ConfigError::new("num_train_timesteps", self.num_train_timesteps, format!("2..={MAX_TRAIN_TIMESTEPS}")));
        }
        for (field, value) in [("shift", self.shift), ("base_shift", self.base_shift), ("max_shift", self.max_shift)] {
            if !(value.is_finite() && value > 0.0 && value <= 100.0) {
                return Err(ConfigError::new(field, short_number(value), "a number above 0, at most 100"));
            }
        }
        if self.base_image_seq_len < 1 || self.max_image_seq_len <= self.base_image_seq_len {
            return Err(ConfigError::new(
                "max_image_seq_len",
                self.max_image_seq_len,
                format!("more than base_image_seq_len ({}), which is at least 1", self.base_image_seq_len),
            ));
        }
        if let Some(t) = self.shift_terminal.filter(|t| !(t.is_finite() && *t > 0.0 && *t < 1.0)) {
            return Err(ConfigError::new("shift_terminal", short_number(t), "a number between 0 and 1 (exclusive), or null"));
        }
        let unsupported = [
            ("use_karras_sigmas", self.use_karras_sigmas),
            ("use_exponential_sigmas", self.use_exponential_sigmas),
            ("use_beta_sigmas", self.use_beta_sigmas),
            ("invert_sigmas", self.invert_sigmas),
            ("stochastic_sampling", self.stochastic_sampling),
        ];
        if let Some((field, _)) = unsupported.into_iter().find(|(_, on)| *on) {
            return Err(ConfigError::new(field, true, "false (difforge does not compute that schedule yet)"));
        }
        if self.time_shift_type != "exponential" {
            return Err(ConfigError::new("time_shift_type", format!("\"{}\"", self.time_shift_type), "\"exponential\""));
        }
        Ok(())
    }

    /// The schedule's settings.
    pub fn flow(&self) -> FlowMatchConfig {
        FlowMatchConfig {
            train_timesteps: self.num_train_timesteps,
            shift: self.shift,
            dynamic_shifting: self.use_dynamic_shifting,
            shift_terminal: self.shift_terminal,
        }
    }

    /// With dynamic shifting, the `mu` diffusers' SD3 pipeline gives an image of
    /// `image_seq_len` patches (`calculate_shift`: linear between the base and max lengths'
    /// shifts); None without.
    pub fn mu(&self, image_seq_len: usize) -> Option<f64> {
        self.use_dynamic_shifting.then(|| {
            let (base, max) = (self.base_image_seq_len as f64, self.max_image_seq_len as f64);
            let m = (self.max_shift - self.base_shift) / (max - base);
            let b = self.base_shift - m * base;
            image_seq_len as f64 * m + b
        })
    }
}

/// Why a config text was refused.
enum Parse {
    Json(String),
    Field(ConfigError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match FlowSchedulerConfig::parse(text) {
            Ok(_) => panic!("{text} was accepted"),
            Err(Parse::Json(why)) => why,
            Err(Parse::Field(e)) => e.to_string(),
        }
    }

    #[test]
    fn sd3s_config_reads_with_diffusers_defaults() {
        let text = r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.29.0.dev0", "num_train_timesteps": 1000, "shift": 3.0}"#;
        let c = FlowSchedulerConfig::parse(text).ok().unwrap();
        assert_eq!(c.flow(), FlowMatchConfig { train_timesteps: 1000, shift: 3.0, dynamic_shifting: false, shift_terminal: None });
        assert_eq!(c.mu(4096), None);
        let schedule = c.flow().sampling(28, None).unwrap();
        assert_eq!((schedule.sigmas.len(), schedule.sigmas[0], schedule.sigmas[28]), (29, 1.0, 0.0));
    }

    #[test]
    fn mu_is_linear_between_the_base_and_max_lengths() {
        let c = FlowSchedulerConfig { use_dynamic_shifting: true, ..FlowSchedulerConfig::default() };
        assert!((c.mu(256).unwrap() - 0.5).abs() < 1e-12);
        assert!((c.mu(4096).unwrap() - 1.15).abs() < 1e-12);
        assert!((c.mu(1024).unwrap() - (0.5 + 0.65 * 768.0 / 3840.0)).abs() < 1e-12);
    }

    #[test]
    fn what_difforge_does_not_compute_is_refused_by_field() {
        let base = r#""_class_name": "FlowMatchEulerDiscreteScheduler""#;
        assert!(err(&format!(r#"{{{base}, "use_karras_sigmas": true}}"#)).contains("use_karras_sigmas"));
        assert!(err(&format!(r#"{{{base}, "stochastic_sampling": true}}"#)).contains("stochastic_sampling"));
        assert!(err(&format!(r#"{{{base}, "time_shift_type": "linear"}}"#)).contains("time_shift_type"));
        assert!(err(&format!(r#"{{{base}, "shift": 0}}"#)).contains("shift = 0"));
        assert!(err(&format!(r#"{{{base}, "shift_terminal": 1.5}}"#)).contains("shift_terminal"));
        assert!(err(&format!(r#"{{{base}, "num_train_timesteps": 1000000000000}}"#)).contains("num_train_timesteps"));
        assert!(err(r#"{"_class_name": "DDIMScheduler"}"#).contains("FlowMatchEulerDiscreteScheduler"));
        assert!(err("{").contains("EOF"));
    }
}
