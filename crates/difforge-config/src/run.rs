//! The whole run config, how it is read (file or built-in default, then `--set` overrides) and
//! checked, and how it is written back.

use crate::finetune::FinetuneConfig;
use crate::model::ModelConfig;
use crate::overrides::apply_set;
use crate::train::TrainConfig;
use difforge_core::ConfigError;
use difforge_data::DataConfig;
use difforge_diffusion::{DiffusionConfig, SamplerConfig};
use difforge_nn::lora::LoraTarget;
use difforge_nn::LoraConfig;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The built-in default: the digits demo.
pub const DEFAULT_CONFIG: &str = include_str!("../../../configs/digits.toml");

/// The whole run config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// The one seed every random draw of the run derives from.
    pub seed: u64,
    pub data: DataConfig,
    /// The model family and its settings; read by [`ModelConfig::from_table`] (the family tag
    /// decides which settings are valid), so serde skips it when reading.
    #[serde(skip_deserializing)]
    pub model: ModelConfig,
    pub diffusion: DiffusionConfig,
    pub train: TrainConfig,
    pub sample: SamplerConfig,
    pub finetune: FinetuneConfig,
    /// LoRA adapters: when present, only the adapters train and the rest is frozen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
}

impl RunConfig {
    /// Reads a config (the built-in default when `path` is None), applies `--set` overrides,
    /// resolves derived fields and validates.
    pub fn load(path: Option<&Path>, sets: &[String]) -> Result<RunConfig, ConfigError> {
        let (text, origin) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|e| ConfigError::new("--config", p.display(), format!("a readable TOML file ({e})")))?,
                p.display().to_string(),
            ),
            None => (DEFAULT_CONFIG.to_string(), "the built-in digits config".to_string()),
        };
        RunConfig::from_toml(&text, sets, &origin)
    }

    /// Parses TOML text, applies `--set` overrides, resolves and validates. Errors carry
    /// `origin` (a file name or a description).
    pub fn from_toml(text: &str, sets: &[String], origin: &str) -> Result<RunConfig, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::problem("", e.message().trim().to_string()).with_origin(origin))?;
        for s in sets {
            apply_set(&mut table, s)?;
        }
        let model = match table.remove("model") {
            None => toml::Table::new(),
            Some(toml::Value::Table(t)) => t,
            Some(other) => return Err(ConfigError::new("model", other, "a [model] section").with_origin(origin)),
        };
        let mut cfg: RunConfig = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::problem(if key == "." { String::new() } else { key }, e.into_inner().message().trim().to_string()).with_origin(origin)
        })?;
        cfg.model = ModelConfig::from_table(model).map_err(|e| e.with_origin(origin))?;
        cfg.resolve();
        cfg.validate().map_err(|e| e.with_origin(origin))?;
        Ok(cfg)
    }

    /// Fills the model settings that default to the data's.
    pub fn resolve(&mut self) {
        self.model.resolve(&self.data);
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.data.validate()?;
        self.model.validate(&self.data)?;
        self.diffusion.validate()?;
        self.train.validate()?;
        self.sample.validate(self.diffusion.timesteps)?;
        self.finetune.validate(self.model.has_base())?;
        if let Some(l) = &self.lora {
            l.validate()?;
            if !matches!(&self.model, ModelConfig::StableDiffusion(_)) {
                if l.text_encoder {
                    return Err(ConfigError::new("lora.text_encoder", true, "false for pixel models (they have no text encoder)"));
                }
                // The pixel UNet's attention has no proj_in/proj_out or feed-forward layers.
                if let Some(t) = l.targets.iter().find(|t| matches!(t, LoraTarget::Projection | LoraTarget::FeedForward)) {
                    return Err(ConfigError::new("lora.targets", t.name(), "some of \"attention\", \"conv\", \"embedding\" for pixel models"));
                }
            }
            if matches!(&self.model, ModelConfig::StableDiffusion(sd) if sd.train_text_encoder) {
                return Err(ConfigError::problem(
                    "model.train_text_encoder",
                    "trains every text-encoder weight: not with [lora] (for adapters on the text encoder, set lora.text_encoder = true)",
                ));
            }
            if self.finetune.from.is_none() && !self.model.has_base() {
                return Err(ConfigError::problem("lora", "LoRA adapts a trained model: set finetune.from (or use `difforge finetune --from`)"));
            }
        }
        Ok(())
    }

    /// The effective config as TOML (what `config show` prints and a run folder keeps).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot serialise config: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;

    fn load(text: &str, sets: &[&str]) -> Result<RunConfig, ConfigError> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        RunConfig::from_toml(text, &sets, "test")
    }

    #[test]
    fn the_default_config_parses_and_round_trips() {
        let cfg = RunConfig::load(None, &[]).unwrap();
        let again = load(&cfg.to_toml(), &[]).unwrap();
        assert_eq!(cfg, again);
        assert!(cfg.to_toml().contains("family = \"pixel-unet\""));
    }

    #[test]
    fn set_overrides_nested_keys_with_typed_values() {
        let cfg = load(DEFAULT_CONFIG, &["train.steps=200", "model.channel_mult=[1,2]", "sample.sampler=ddpm", "data.augment.hflip=0.5"]).unwrap();
        assert_eq!(cfg.train.steps, 200);
        let ModelConfig::PixelUnet(m) = &cfg.model else { panic!("the default is a pixel UNet") };
        assert_eq!(m.channel_mult, vec![1, 2]);
        assert_eq!(cfg.sample.sampler.name(), "ddpm");
        assert_eq!(cfg.data.augment.hflip, 0.5);
    }

    #[test]
    fn errors_name_the_key() {
        let key = |text: &str, sets: &[&str]| load(text, sets).unwrap_err();
        assert!(key("[train]\nstepz = 3\n", &[]).to_string().contains("stepz"));
        assert_eq!(key("[train]\nsteps = \"many\"\n", &[]).key, "train.steps");
        assert_eq!(key("", &["train.lr=-1"]).key, "train.lr");
        assert_eq!(key("", &["train.lr=nan"]).key, "train.lr");
        assert_eq!(key("", &["train.adam_eps=nan"]).key, "train.adam_eps");
        assert_eq!(key("", &["diffusion.min_snr_gamma=nan"]).key, "diffusion.min_snr_gamma");
        assert_eq!(key("", &["data.channels=2"]).key, "data.channels");
        assert_eq!(key("", &["model.channels=0"]).key, "model.channels");
        assert_eq!(key("", &["train.sample_per_class=0"]).key, "train.sample_per_class");
        assert_eq!(key("", &["sample.sampler=heun"]).key, "sample.sampler");
        assert!(key("", &["model.schedule=cosine"]).to_string().contains("schedule"));
        assert!(key("", &["nokey"]).to_string().contains("key=value"));
        assert_eq!(key("", &["model.in_channels=3"]).key, "model.in_channels");
        // What only Stable Diffusion's adapters can do.
        assert_eq!(key("[lora]\ntext_encoder = true\n", &[]).key, "lora.text_encoder");
        assert_eq!(key("[lora]\ntargets = [\"feed_forward\"]\n", &[]).key, "lora.targets");
    }
}
