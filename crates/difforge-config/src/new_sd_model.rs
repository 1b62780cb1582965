//! `[model.new]`: a Stable Diffusion model made from scratch instead of a published `model.base`.
//! The run first trains the VAE its config names (or takes a trained one), then writes a fresh
//! UNet2DConditionModel and CLIP text encoder of these sizes around it (what `difforge sd init`
//! does) and trains them: one config, every stage of a text-to-image model.

use difforge_core::ConfigError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NewSdModel {
    /// The VAE: a VAE run config (`.toml`, as `difforge vae train` takes), trained first into
    /// the run folder's `stages/vae`; or a diffusers AutoencoderKL folder, used as it is.
    pub vae: PathBuf,
    /// UNet channels per level; every level has cross-attention to the text.
    pub unet_channels: Vec<i64>,
    pub layers_per_block: i64,
    /// Attention heads in the UNet (diffusers' `attention_head_dim`, which SD 1.x uses as the
    /// head count).
    pub unet_heads: i64,
    pub norm_groups: i64,
    /// The text encoder's width (the UNet's cross-attention dimension).
    pub text_width: i64,
    pub text_layers: i64,
    pub text_heads: i64,
    /// The tokenizer: CLIP's ("clip", 49,408 tokens), or one learnt from the training captions
    /// ("learned": CLIP's form, byte tokens plus the captions' frequent pairs, a few hundred
    /// tokens for a small set, so the text encoder's embedding table is that much smaller).
    pub tokenizer: NewTokenizer,
    /// Seeds the fresh weights (none: the run's seed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// Which tokenizer a new model gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NewTokenizer {
    Clip,
    Learned,
}

impl Default for NewSdModel {
    fn default() -> Self {
        NewSdModel {
            vae: PathBuf::new(),
            unet_channels: vec![64, 128],
            layers_per_block: 1,
            unet_heads: 4,
            norm_groups: 16,
            text_width: 64,
            text_layers: 2,
            text_heads: 2,
            tokenizer: NewTokenizer::Clip,
            seed: None,
        }
    }
}

impl NewSdModel {
    /// Whether `vae` is a VAE run config to train (rather than a trained VAE folder).
    pub fn trains_vae(&self) -> bool {
        self.vae.extension().is_some_and(|e| e == "toml")
    }

    /// Checks the sizes build; `key` names a field for the error (a config key or a flag).
    pub fn validate(&self, key: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        if self.unet_channels.is_empty() || self.unet_channels.len() > 5 {
            return Err(ConfigError::new(key("unet_channels"), format!("{:?}", self.unet_channels), "1 to 5 levels"));
        }
        for (name, v) in [("norm_groups", self.norm_groups), ("unet_heads", self.unet_heads), ("text_heads", self.text_heads)] {
            if v < 1 {
                return Err(ConfigError::new(key(name), v, "at least 1"));
            }
        }
        if let Some(c) = self.unet_channels.iter().find(|&&c| c < 1 || c % self.norm_groups != 0 || c % self.unet_heads != 0) {
            let expected = format!("multiples of {} ({}) and {} ({})", key("norm_groups"), self.norm_groups, key("unet_heads"), self.unet_heads);
            return Err(ConfigError::new(key("unet_channels"), c, expected));
        }
        if self.text_width < 1 || self.text_width % self.text_heads != 0 {
            return Err(ConfigError::new(key("text_width"), self.text_width, format!("a positive multiple of {} ({})", key("text_heads"), self.text_heads)));
        }
        for (name, v) in [("layers_per_block", self.layers_per_block), ("text_layers", self.text_layers)] {
            if !(1..=32).contains(&v) {
                return Err(ConfigError::new(key(name), v, "1..=32"));
            }
        }
        Ok(())
    }

    /// Checks the section of a run config: sizes that build, and a VAE named.
    pub fn validate_section(&self) -> Result<(), ConfigError> {
        self.validate(&|name: &str| format!("model.new.{name}"))?;
        if self.vae.as_os_str().is_empty() {
            return Err(ConfigError::new("model.new.vae", "\"\"", VAE_EXPECTED));
        }
        Ok(())
    }

    /// Checks that the VAE exists (before a run spends time on anything else).
    pub fn check_vae(&self) -> Result<(), ConfigError> {
        let vae = &self.vae;
        if self.trains_vae() && vae.is_file() || !self.trains_vae() && vae.join("config.json").is_file() {
            return Ok(());
        }
        Err(ConfigError::new("model.new.vae", format!("\"{}\"", vae.display()), VAE_EXPECTED))
    }
}

const VAE_EXPECTED: &str = "a VAE run config (.toml) to train first, or a diffusers AutoencoderKL folder (with config.json)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_that_cannot_build_are_refused_by_key() {
        let key = |name: &str| format!("model.new.{name}");
        assert!(NewSdModel::default().validate(&key).is_ok());
        let bad = NewSdModel { unet_channels: vec![20, 40], ..Default::default() };
        assert_eq!(bad.validate(&key).unwrap_err().key, "model.new.unet_channels");
        let bad = NewSdModel { text_width: 63, ..Default::default() };
        assert_eq!(bad.validate(&key).unwrap_err().key, "model.new.text_width");
        let bad = NewSdModel { norm_groups: 0, ..Default::default() };
        assert_eq!(bad.validate(&|n: &str| format!("--{}", n.replace('_', "-"))).unwrap_err().key, "--norm-groups");
    }

    #[test]
    fn the_vae_must_be_a_config_or_a_folder() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(NewSdModel::default().validate_section().unwrap_err().key, "model.new.vae");
        let missing = NewSdModel { vae: dir.path().join("nope.toml"), ..Default::default() };
        assert!(missing.validate_section().is_ok());
        assert_eq!(missing.check_vae().unwrap_err().key, "model.new.vae");
        std::fs::write(dir.path().join("vae.toml"), "").unwrap();
        assert!(NewSdModel { vae: dir.path().join("vae.toml"), ..Default::default() }.check_vae().is_ok());
        assert!(NewSdModel { vae: dir.path().to_path_buf(), ..Default::default() }.check_vae().is_err());
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        assert!(NewSdModel { vae: dir.path().to_path_buf(), ..Default::default() }.check_vae().is_ok());
    }
}
