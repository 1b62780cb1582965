//! The config of a VAE training run (`difforge vae train`): the data, the `[train]` keys that
//! apply to an autoencoder, and `[vae]`: the AutoencoderKL's shape and its loss. A `[train]` key
//! that only means something for diffusion (EMA, samples, evaluation, data-parallel) is refused
//! by name rather than silently ignored.

use crate::overrides::apply_set;
use crate::train::TrainConfig;
use difforge_core::ConfigError;
use difforge_data::DataConfig;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `[train]` keys a VAE run does not use, with why.
const NOT_FOR_VAE: &[(&str, &str)] = &[
    ("ema_decay", "a VAE run keeps no EMA copy"),
    ("sample_every", "a VAE run writes reconstructions at every validation, not samples"),
    ("sample_per_class", "a VAE run writes reconstructions, not samples"),
    ("val_repeats", "VAE validation is deterministic (the posterior mean), one pass is exact"),
    ("val_bands", "VAE validation has no timestep bands"),
    ("early_stop_metric", "a VAE run stops early on its validation reconstruction loss"),
    ("early_stop_mode", "a VAE run stops early on its validation reconstruction loss"),
    ("eval_every", "a VAE run reports PSNR and SSIM at every validation"),
    ("eval_samples", "a VAE run reports PSNR and SSIM at every validation"),
    ("eval_classifier", "a VAE run has no sample evaluation"),
    ("eval_inception_weights", "a VAE run has no sample evaluation"),
    ("dist_backend", "VAE training runs in one process"),
    ("dist_timeout_s", "VAE training runs in one process"),
    ("debug_nan_steps", "fault injection is for the diffusion trainer's tests"),
];

/// The reconstruction term of the VAE loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReconstructionLoss {
    /// Mean absolute error, as Stable Diffusion's VAE was trained (with a perceptual term).
    #[default]
    L1,
    /// Mean squared error.
    L2,
}

/// `[vae]`: the network (diffusers AutoencoderKL fields) and the loss weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaeConfig {
    /// Channels of each resolution level; the image is downscaled 2x between levels, so
    /// `len - 1` levels give the factor f (3 entries: f = 4).
    pub block_out_channels: Vec<i64>,
    pub latent_channels: i64,
    pub layers_per_block: i64,
    pub norm_num_groups: i64,
    /// Self-attention in the middle block (diffusers' `mid_block_add_attention`).
    pub mid_block_attention: bool,
    pub reconstruction_loss: ReconstructionLoss,
    /// Weight of the KL divergence to N(0, I), per latent element (SD's VAE: 1e-6).
    pub kl_weight: f64,
}

impl Default for VaeConfig {
    fn default() -> Self {
        VaeConfig {
            block_out_channels: vec![32, 64, 64],
            latent_channels: 4,
            layers_per_block: 1,
            norm_num_groups: 16,
            mid_block_attention: true,
            reconstruction_loss: ReconstructionLoss::L1,
            kl_weight: 1e-6,
        }
    }
}

impl VaeConfig {
    /// How many times smaller the latents are than the images.
    pub fn downscale(&self) -> u32 {
        1 << self.block_out_channels.len().saturating_sub(1).min(16)
    }

    pub fn validate(&self, data: &DataConfig) -> Result<(), ConfigError> {
        let levels = self.block_out_channels.len();
        if !(1..=6).contains(&levels) {
            return Err(ConfigError::new("vae.block_out_channels", format!("{:?}", self.block_out_channels), "1 to 6 levels"));
        }
        for (key, v, max) in [
            ("vae.latent_channels", self.latent_channels, 64),
            ("vae.layers_per_block", self.layers_per_block, 8),
            ("vae.norm_num_groups", self.norm_num_groups, 1024),
        ] {
            if !(1..=max).contains(&v) {
                return Err(ConfigError::new(key, v, format!("1..={max}")));
            }
        }
        if let Some(c) = self.block_out_channels.iter().find(|&&c| !(1..=4096).contains(&c) || c % self.norm_num_groups != 0) {
            return Err(ConfigError::new(
                "vae.block_out_channels",
                c,
                format!("channel counts in 1..=4096 that are multiples of vae.norm_num_groups ({})", self.norm_num_groups),
            ));
        }
        if !(self.kl_weight.is_finite() && (0.0..=1.0).contains(&self.kl_weight)) {
            return Err(ConfigError::new("vae.kl_weight", self.kl_weight, "0 <= kl_weight <= 1"));
        }
        let f = self.downscale();
        if !data.image_size.is_multiple_of(f) {
            return Err(ConfigError::new(
                "data.image_size",
                data.image_size,
                format!("a multiple of {f}, the downscale of vae.block_out_channels ({levels} levels)"),
            ));
        }
        Ok(())
    }
}

/// The whole config of a VAE run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct VaeRunConfig {
    pub seed: u64,
    pub data: DataConfig,
    pub train: TrainConfig,
    pub vae: VaeConfig,
}

impl VaeRunConfig {
    /// Whether the TOML file at `path` is a VAE run's config (it has a `[vae]` section), for
    /// commands that take either kind (`config show`). Unreadable or invalid files are not.
    pub fn describes(path: &Path) -> bool {
        let Ok(text) = std::fs::read_to_string(path) else { return false };
        text.parse::<toml::Table>().is_ok_and(|t| t.get("vae").is_some_and(toml::Value::is_table))
    }

    /// Reads a config file and applies `--set` overrides.
    pub fn load(path: &Path, sets: &[String]) -> Result<VaeRunConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::new("--config", path.display(), format!("a readable TOML file ({e})")))?;
        VaeRunConfig::from_toml(&text, sets, &path.display().to_string())
    }

    /// Parses TOML text, applies `--set` overrides and validates; errors carry `origin`.
    pub fn from_toml(text: &str, sets: &[String], origin: &str) -> Result<VaeRunConfig, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::problem("", e.message().trim().to_string()).with_origin(origin))?;
        for s in sets {
            apply_set(&mut table, s)?;
        }
        if let Some(toml::Value::Table(train)) = table.get("train") {
            if let Some((key, why)) = NOT_FOR_VAE.iter().find(|(k, _)| train.contains_key(*k)) {
                return Err(ConfigError::problem(format!("train.{key}"), format!("not used by VAE training: {why}")).with_origin(origin));
            }
        }
        let cfg: VaeRunConfig = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::problem(if key == "." { String::new() } else { key }, e.into_inner().message().trim().to_string()).with_origin(origin)
        })?;
        cfg.validate().map_err(|e| e.with_origin(origin))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.data.validate()?;
        if self.data.source == difforge_data::SourceKind::Webdataset {
            return Err(ConfigError::new("data.source", "\"webdataset\"", "an in-memory source (\"folder\", \"idx\" or \"digits\") for VAE training"));
        }
        self.train.validate()?;
        if self.train.early_stop_patience > 0 && self.train.val_every == 0 {
            return Err(ConfigError::problem("train.early_stop_patience", "needs validation: set train.val_every > 0"));
        }
        self.vae.validate(&self.data)
    }

    /// The effective config as TOML (what a run folder keeps and `--resume` reads back), without
    /// the `[train]` keys a VAE run refuses.
    pub fn to_toml(&self) -> String {
        let mut table = match toml::Table::try_from(self) {
            Ok(t) => t,
            Err(e) => return format!("# cannot serialise config: {e}\n"),
        };
        if let Some(toml::Value::Table(train)) = table.get_mut("train") {
            for (key, _) in NOT_FOR_VAE {
                train.remove(*key);
            }
        }
        toml::to_string_pretty(&table).unwrap_or_else(|e| format!("# cannot serialise config: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<VaeRunConfig, ConfigError> {
        VaeRunConfig::from_toml(text, &[], "test")
    }

    #[test]
    fn defaults_parse_and_give_f4() {
        let cfg = parse("[data]\nsource = \"digits\"\nimage_size = 16\n").unwrap();
        assert_eq!(cfg.vae.downscale(), 4);
        assert_eq!(cfg.vae.reconstruction_loss, ReconstructionLoss::L1);
    }

    #[test]
    fn diffusion_only_train_keys_are_refused_by_name() {
        let err = parse("[data]\nsource = \"digits\"\nimage_size = 16\n[train]\nema_decay = 0.99\n").unwrap_err().to_string();
        assert!(err.contains("train.ema_decay") && err.contains("EMA"), "{err}");
    }

    #[test]
    fn the_written_config_reads_back_equal() {
        let cfg = parse("seed = 3\n[data]\nsource = \"digits\"\nimage_size = 16\n[train]\nsteps = 7\n[vae]\nkl_weight = 0.001\n").unwrap();
        assert_eq!(parse(&cfg.to_toml()).unwrap(), cfg);
    }

    #[test]
    fn image_size_must_divide_by_the_downscale() {
        let err = parse("[data]\nsource = \"digits\"\nimage_size = 18\n").unwrap_err().to_string();
        assert!(err.contains("data.image_size") && err.contains("multiple of 4"), "{err}");
    }

    #[test]
    fn channels_must_be_multiples_of_the_groups() {
        let err = parse("[data]\nsource = \"digits\"\nimage_size = 16\n[vae]\nblock_out_channels = [24, 32]\n").unwrap_err().to_string();
        assert!(err.contains("vae.block_out_channels") && err.contains("24"), "{err}");
        let err = parse("[data]\nsource = \"digits\"\nimage_size = 16\n[vae]\nkl_weights = 1.0\n").unwrap_err().to_string();
        assert!(err.contains("kl_weights"), "{err}");
    }
}
