//! The `[model]` section: a model family, tagged by `family`, and that family's settings, which
//! may start from a named preset (`preset = "ref6m"`) with any key overridden. A section without
//! `family` is a pixel-space UNet, as every config and checkpoint written before families existed.

use crate::stable_diffusion::StableDiffusionConfig;
use difforge_core::{Choice, ConfigError};
use difforge_data::DataConfig;
use difforge_nn::UNetConfig;
use serde::Serialize;

difforge_core::choice! {
    /// The kinds of model difforge trains.
    pub enum ModelFamily {
        /// A UNet on pixels, conditioned on a class or on nothing (DDPM/ADM layout).
        PixelUnet = "pixel-unet",
        /// A published Stable Diffusion model (VAE, CLIP text encoder, UNet2DConditionModel) whose
        /// UNet is fine-tuned on captioned images.
        StableDiffusion = "stable-diffusion",
    }
}

/// A model family's settings.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    PixelUnet(UNetConfig),
    StableDiffusion(StableDiffusionConfig),
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig::PixelUnet(UNetConfig::default())
    }
}

/// How the section is written: the family first, then its settings.
#[derive(Serialize)]
struct Tagged<'a, T: Serialize> {
    family: &'static str,
    #[serde(flatten)]
    settings: &'a T,
}

impl Serialize for ModelConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ModelConfig::PixelUnet(c) => Tagged { family: ModelFamily::PixelUnet.name(), settings: c }.serialize(s),
            ModelConfig::StableDiffusion(c) => Tagged { family: ModelFamily::StableDiffusion.name(), settings: c }.serialize(s),
        }
    }
}

/// Deserialises one family's settings from the section's keys, naming any bad key in full.
fn settings<T: serde::de::DeserializeOwned>(table: toml::Table) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." || path.is_empty() { "model".to_string() } else { format!("model.{path}") };
        ConfigError::problem(key, e.into_inner().message().trim().to_string())
    })
}

fn preset_table<T: Serialize>(preset: &T) -> Result<toml::Table, ConfigError> {
    toml::Value::try_from(preset).ok().and_then(|v| v.as_table().cloned()).ok_or_else(|| ConfigError::problem("model.preset", "the preset cannot be expanded"))
}

impl ModelConfig {
    /// Builds the section from its TOML table: `family` (default "pixel-unet"), an optional
    /// `preset` of that family, then the keys given, which override the preset.
    pub fn from_table(mut table: toml::Table) -> Result<ModelConfig, ConfigError> {
        let family = match table.remove("family") {
            None => ModelFamily::PixelUnet,
            Some(toml::Value::String(name)) => {
                ModelFamily::parse(&name).ok_or_else(|| ConfigError::new("model.family", format!("\"{name}\""), ModelFamily::expected()))?
            }
            Some(other) => return Err(ConfigError::new("model.family", other, ModelFamily::expected())),
        };
        let preset = match table.remove("preset") {
            None => None,
            Some(toml::Value::String(name)) => Some(name),
            Some(other) => return Err(ConfigError::new("model.preset", other, "a preset name")),
        };
        match family {
            ModelFamily::PixelUnet => {
                let mut merged = match &preset {
                    None => toml::Table::new(),
                    Some(name) => {
                        let base = UNetConfig::preset(name).ok_or_else(|| {
                            ConfigError::new(
                                "model.preset",
                                format!("\"{name}\""),
                                format!("a pixel-unet preset: {}", difforge_core::one_of(UNetConfig::PRESETS)),
                            )
                        })?;
                        preset_table(&base)?
                    }
                };
                merged.extend(table);
                Ok(ModelConfig::PixelUnet(settings(merged)?))
            }
            ModelFamily::StableDiffusion => {
                if let Some(name) = preset {
                    return Err(ConfigError::new("model.preset", format!("\"{name}\""), "nothing: a stable-diffusion model starts from model.base"));
                }
                Ok(ModelConfig::StableDiffusion(settings(table)?))
            }
        }
    }

    pub fn family(&self) -> ModelFamily {
        match self {
            ModelConfig::PixelUnet(_) => ModelFamily::PixelUnet,
            ModelConfig::StableDiffusion(_) => ModelFamily::StableDiffusion,
        }
    }

    /// Whether the model starts from published weights of its own (so LoRA needs no
    /// `finetune.from`).
    pub fn has_base(&self) -> bool {
        matches!(self, ModelConfig::StableDiffusion(_))
    }

    /// Fills the settings that default to the data's (channels, image size).
    pub fn resolve(&mut self, data: &DataConfig) {
        match self {
            ModelConfig::PixelUnet(c) => {
                if c.in_channels == 0 {
                    c.in_channels = i64::from(data.channels);
                }
                if c.out_channels == 0 {
                    c.out_channels = c.in_channels;
                }
                if c.image_size == 0 {
                    c.image_size = i64::from(data.image_size);
                }
            }
            ModelConfig::StableDiffusion(c) => c.resolve(data),
        }
    }

    /// The family's own checks, and its agreement with the data.
    pub fn validate(&self, data: &DataConfig) -> Result<(), ConfigError> {
        match self {
            ModelConfig::PixelUnet(c) => {
                c.validate()?;
                if c.in_channels != i64::from(data.channels) {
                    return Err(ConfigError::new("model.in_channels", c.in_channels, format!("the same as data.channels ({})", data.channels)));
                }
                if c.image_size != i64::from(data.image_size) {
                    return Err(ConfigError::new("model.image_size", c.image_size, format!("the same as data.image_size ({})", data.image_size)));
                }
                Ok(())
            }
            ModelConfig::StableDiffusion(c) => c.validate(data),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn a_section_without_family_is_a_pixel_unet_and_round_trips() {
        let m = ModelConfig::from_table(table("channels = 48\nnum_classes = 3\n")).unwrap();
        let ModelConfig::PixelUnet(c) = &m else { panic!("not a pixel UNet: {m:?}") };
        assert_eq!((c.channels, c.num_classes), (48, 3));
        let text = toml::to_string(&m).unwrap();
        assert!(text.starts_with("family = \"pixel-unet\""), "{text}");
        assert_eq!(ModelConfig::from_table(table(&text)).unwrap(), m);
    }

    #[test]
    fn presets_fill_in_and_keys_override_them() {
        let m = ModelConfig::from_table(table("family = \"pixel-unet\"\npreset = \"ref6m\"\nheads = 2\n")).unwrap();
        let ModelConfig::PixelUnet(c) = &m else { panic!("not a pixel UNet: {m:?}") };
        let preset = UNetConfig::preset("ref6m").unwrap();
        assert_eq!((c.channels, c.heads, c.scale_shift), (preset.channels, 2, preset.scale_shift));
    }

    #[test]
    fn a_stable_diffusion_section_names_its_base_and_round_trips() {
        let m = ModelConfig::from_table(table("family = \"stable-diffusion\"\nbase = \"models/sd15\"\nclip_skip = 1\n")).unwrap();
        let ModelConfig::StableDiffusion(c) = &m else { panic!("not stable-diffusion: {m:?}") };
        assert_eq!((c.base.to_str(), c.clip_skip, c.image_size), (Some("models/sd15"), 1, 0));
        assert_eq!(ModelConfig::from_table(table(&toml::to_string(&m).unwrap())).unwrap(), m);
        let rgb = DataConfig { channels: 3, ..DataConfig::default() };
        let mut no_base = ModelConfig::from_table(table("family = \"stable-diffusion\"\n")).unwrap();
        no_base.resolve(&rgb);
        let e = no_base.validate(&rgb).unwrap_err();
        assert!(e.to_string().contains("base"), "{e}");
        let e = ModelConfig::from_table(table("family = \"stable-diffusion\"\nbase = \"x\"\npreset = \"sd15\"\n")).unwrap_err();
        assert_eq!(e.key, "model.preset");
    }

    #[test]
    fn a_new_stable_diffusion_model_replaces_the_base() {
        let rgb = DataConfig { channels: 3, ..DataConfig::default() };
        let checked = |text: &str| {
            let mut m = ModelConfig::from_table(table(text))?;
            m.resolve(&rgb);
            m.validate(&rgb).map(|_| m)
        };
        let new = "family = \"stable-diffusion\"\ntrain_text_encoder = true\n[new]\nvae = \"vae.toml\"\nunet_channels = [32, 64]\n";
        let m = checked(new).unwrap();
        let ModelConfig::StableDiffusion(c) = &m else { panic!("not stable-diffusion: {m:?}") };
        assert_eq!(c.new.as_ref().map(|n| (n.unet_channels.clone(), n.text_width)), Some((vec![32, 64], 64)));
        assert_eq!(ModelConfig::from_table(table(&toml::to_string(&m).unwrap())).unwrap(), m, "round trip");
        assert_eq!(checked(&format!("base = \"x\"\n{new}")).unwrap_err().key, "model.base");
        assert_eq!(checked(&new.replace("train_text_encoder = true", "")).unwrap_err().key, "model.train_text_encoder");
        assert_eq!(checked(&new.replace("unet_channels", "unet_chanels")).unwrap_err().key, "model.new.unet_chanels");
    }

    #[test]
    fn errors_name_the_key() {
        let e = ModelConfig::from_table(table("family = \"sdxl\"\n")).unwrap_err();
        assert_eq!(e.key, "model.family");
        let e = ModelConfig::from_table(table("preset = \"huge\"\n")).unwrap_err();
        assert_eq!(e.key, "model.preset");
        let e = ModelConfig::from_table(table("chanels = 3\n")).unwrap_err();
        assert!(e.to_string().contains("chanels"), "{e}");
        let e = ModelConfig::from_table(table("channels = \"many\"\n")).unwrap_err();
        assert_eq!(e.key, "model.channels");
    }
}
