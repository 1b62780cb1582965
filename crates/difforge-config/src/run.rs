//! The whole run config, how it is read (file or built-in default, then `--set` overrides) and
//! checked, and how it is written back.

use crate::finetune::FinetuneConfig;
use crate::model::ModelConfig;
use crate::overrides::{apply_set, fill_missing, GivenOverDefault};
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

/// What a run's model says its config holds where the config is silent (a Stable Diffusion
/// base's scheduler gives `[diffusion]` and `[sample]`): the sections to fill, and where they come
/// from. Reading them needs the model's files, which this crate does not read: the loaders of
/// users' configs (difforge-model's `run_defaults`) pass a function that does.
pub struct ModelDefaults {
    /// Sections with the keys the model sets, e.g. `{ sample = { spacing = "leading" } }`.
    pub sections: toml::Table,
    /// Called with the keys the config gives otherwise (after `--set`), to warn or refuse.
    pub check_given: fn(&[GivenOverDefault], &str) -> Result<(), ConfigError>,
    /// Where the defaults come from, for messages: e.g. "the base's scheduler (PATH)".
    pub source: String,
}

/// Finds the model's defaults for a run's `[model]` settings (None: it has none).
pub type FindDefaults<'a> = &'a dyn Fn(&ModelConfig) -> Result<Option<ModelDefaults>, ConfigError>;

/// For configs that take nothing from their model: built-in defaults, saved run configs.
pub fn no_model_defaults(_: &ModelConfig) -> Result<Option<ModelDefaults>, ConfigError> {
    Ok(None)
}

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
        RunConfig::load_with(path, sets, &no_model_defaults)
    }

    /// [`RunConfig::load`], filling what the config leaves out from its model (`defaults`).
    pub fn load_with(path: Option<&Path>, sets: &[String], defaults: FindDefaults) -> Result<RunConfig, ConfigError> {
        let (text, origin) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|e| ConfigError::new("--config", p.display(), format!("a readable TOML file ({e})")))?,
                p.display().to_string(),
            ),
            None => (DEFAULT_CONFIG.to_string(), "the built-in digits config".to_string()),
        };
        let cfg = RunConfig::from_toml_with(&text, sets, &origin, defaults)?;
        cfg.data.check_path_is_read().map_err(|e| blame(e, sets, &origin))?;
        Ok(cfg)
    }

    /// Parses TOML text, applies `--set` overrides, resolves and validates. Errors carry
    /// `origin` (a file name or a description).
    pub fn from_toml(text: &str, sets: &[String], origin: &str) -> Result<RunConfig, ConfigError> {
        RunConfig::from_toml_with(text, sets, origin, &no_model_defaults)
    }

    /// [`RunConfig::from_toml`], filling what the config leaves out from its model (`defaults`).
    /// An error is blamed on the `--set` that gave its key, else on `origin`, and an unknown key
    /// gets a "did you mean".
    pub fn from_toml_with(text: &str, sets: &[String], origin: &str, defaults: FindDefaults) -> Result<RunConfig, ConfigError> {
        RunConfig::parse(text, sets, defaults).map_err(|e| blame(with_suggestion(e), sets, origin))
    }

    fn parse(text: &str, sets: &[String], defaults: FindDefaults) -> Result<RunConfig, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::problem("", e.message().trim().to_string()))?;
        for s in sets {
            apply_set(&mut table, s)?;
        }
        let model = match table.remove("model") {
            None => toml::Table::new(),
            Some(toml::Value::Table(t)) => t,
            Some(other) => return Err(ConfigError::new("model", other, "a [model] section")),
        };
        let model = ModelConfig::from_table(model)?;
        if let Some(d) = defaults(&model)? {
            let differing = fill_missing(&mut table, d.sections);
            (d.check_given)(&differing, &d.source)?;
        }
        let mut cfg: RunConfig = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::problem(if key == "." { String::new() } else { key }, e.into_inner().message().trim().to_string())
        })?;
        cfg.model = model;
        cfg.resolve();
        cfg.validate()?;
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
        let stable_diffusion = matches!(&self.model, ModelConfig::StableDiffusion(_));
        // Keys only a full fine-tune of Stable Diffusion reads: refused where they would do nothing.
        if self.train.export != [crate::train::ExportFormat::Diffusers] && !(stable_diffusion && self.lora.is_none()) {
            let formats: Vec<&str> = self.train.export.iter().map(|f| f.name()).collect();
            return Err(ConfigError::new(
                "train.export",
                format!("{formats:?}"),
                "[\"diffusers\"] (the default) unless every weight of a Stable Diffusion model trains: LoRA runs write their LoRA files, other models their checkpoints",
            ));
        }
        if let Some(l) = &self.lora {
            l.validate()?;
            if !stable_diffusion && l.output_name != difforge_nn::lora::DEFAULT_OUTPUT_NAME {
                return Err(ConfigError::new(
                    "lora.output_name",
                    format!("{:?}", l.output_name),
                    "\"lora\" for pixel models (it names Stable Diffusion's kohya file)",
                ));
            }
            if !stable_diffusion {
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

/// The error with where its key was given: the last `--set` of that key (or of a section
/// holding it), else `origin`.
fn blame(err: ConfigError, sets: &[String], origin: &str) -> ConfigError {
    let set_key = |s: &&String| s.split_once('=').map(|(k, _)| k.trim().to_string());
    let given = sets.iter().rev().find(|s| set_key(s).is_some_and(|k| !err.key.is_empty() && (k == err.key || k.starts_with(&format!("{}.", err.key)))));
    match given {
        Some(s) => err.with_origin(format!("--set {s}")),
        None => err.with_origin(origin),
    }
}

/// An "unknown field" error with a suggestion: another tool's name for the key, or a near miss.
fn with_suggestion(mut err: ConfigError) -> ConfigError {
    let Some(field) = err.expected.strip_prefix("unknown field `").and_then(|rest| rest.split('`').next()).map(str::to_string) else { return err };
    let section = err.key.strip_suffix(&format!(".{field}")).or_else(|| err.key.strip_suffix(field.as_str())).unwrap_or(&err.key).to_string();
    if let Some(hint) = crate::suggest::suggestion(&section, &field, &crate::suggest::expected_fields(&err.expected)) {
        err.expected = format!("{}; {hint}", err.expected);
    }
    err
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
        assert_eq!(key("", &["train.export=[]"]).key, "train.export");
        // Keys a pixel model would ignore are refused.
        assert_eq!(key("", &["train.export=[\"single-file\"]"]).key, "train.export");
        assert_eq!(key("[lora]\noutput_name = \"style\"\n[finetune]\nfrom = \"x\"\n", &[]).key, "lora.output_name");
        assert_eq!(key("", &["train.export=[\"diffusers\", \"diffusers\"]"]).key, "train.export");
        assert!(key("", &["model.schedule=cosine"]).to_string().contains("schedule"));
        assert!(key("", &["nokey"]).to_string().contains("key=value"));
        assert_eq!(key("", &["model.in_channels=3"]).key, "model.in_channels");
        // What only Stable Diffusion's adapters can do.
        assert_eq!(key("[lora]\ntext_encoder = true\n", &[]).key, "lora.text_encoder");
        assert_eq!(key("[lora]\ntargets = [\"feed_forward\"]\n", &[]).key, "lora.targets");
    }

    #[test]
    fn text_models_may_say_sample_per_prompt() {
        assert_eq!(load("[train]\nsample_per_prompt = 3\n", &[]).unwrap().train.sample_per_class, 3);
    }

    #[test]
    fn unknown_keys_get_a_suggestion_and_set_errors_name_the_set() {
        let err = load("[train]\nlearning_rate = 1e-4\n", &[]).unwrap_err().to_string();
        assert!(err.contains("did you mean train.lr?"), "{err}");
        let err = load("[train]\nstpes = 3\n", &[]).unwrap_err().to_string();
        assert!(err.starts_with("test: ") && err.contains("did you mean train.steps?"), "{err}");
        let err = load("", &["lora.network_dim=8"]).unwrap_err().to_string();
        assert!(err.starts_with("--set lora.network_dim=8: ") && err.contains("lora.rank"), "{err}");
        let err = load("[train]\nsteps = 3\n", &["train.lr=-1"]).unwrap_err();
        assert_eq!((err.key.as_str(), err.origin.as_deref()), ("train.lr", Some("--set train.lr=-1")));
        // A key the file gives keeps the file as its origin.
        assert_eq!(load("[train]\nlr = -1\n", &["train.steps=4"]).unwrap_err().origin.as_deref(), Some("test"));
    }
}
