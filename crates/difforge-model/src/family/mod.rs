//! Model families: what differs between a class-conditional pixel UNet and a latent
//! text-to-image model (Stable Diffusion). A family builds its denoising network and its codec, turns what a user
//! asks for ([`Condition`]) and what a dataset holds (labels, captions) into the network's
//! [`Conditioning`], knows its null conditioning for guidance, and owns its family-specific rules
//! (how a base checkpoint's tensors grow into a fine-tune, which variables an adapter carries).
//! Everything else in difforge (training, sampling, checkpoints, serving, evaluation) only talks
//! to this trait.

mod latent_cache;
mod pixel_unet;
mod sd_text;
pub(crate) mod sd_unet;
pub(crate) mod stable_diffusion;
mod vae_codec;

pub use pixel_unet::PixelUnetFamily;
pub use stable_diffusion::StableDiffusionFamily;
pub use vae_codec::VaeCodec;

use crate::codec::Codec;
use crate::error::ModelError;
use difforge_config::{ModelConfig, RunConfig};
use difforge_core::{ConfigError, StreamRng};
use difforge_data::{Batch, ImageSet};
use difforge_nn::{Conditioning, DenoiserNet, LoraConfig, LoraSpec};
use std::path::{Path, PathBuf};
use tch::{nn, Device, Tensor};

/// What one generated image is conditioned on, as a user asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Nothing: an unconditional sample (a class-conditional model's null class).
    Unconditional,
    /// A class index of a class-conditional model.
    Class(i64),
    /// A prompt for a text-conditioned model.
    Text(String),
}

/// What a model can be asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionKind {
    /// Nothing: an unconditional model.
    Nothing,
    /// One of this many classes (or nothing, for the null class).
    Classes(i64),
    /// A prompt (or nothing: the empty prompt).
    Text,
}

impl ConditionKind {
    pub fn classes(self) -> Option<i64> {
        match self {
            ConditionKind::Classes(k) => Some(k),
            ConditionKind::Nothing | ConditionKind::Text => None,
        }
    }

    /// Checks a requested class; `key` names the flag or field it came from.
    pub fn check(self, key: &str, condition: &Condition) -> Result<(), ConfigError> {
        match (self, condition) {
            (_, Condition::Unconditional) => Ok(()),
            (ConditionKind::Nothing, Condition::Class(c)) => Err(ConfigError::new(key, c, "nothing: this model is unconditional (omit it)")),
            (ConditionKind::Classes(k), Condition::Class(c)) if !(0..k).contains(c) => Err(ConfigError::new(key, c, format!("a class in 0..={}", k - 1))),
            (ConditionKind::Text, Condition::Class(c)) => Err(ConfigError::new(key, c, "nothing: this model is conditioned on text (give a prompt)")),
            (ConditionKind::Nothing | ConditionKind::Classes(_), Condition::Text(t)) => {
                Err(ConfigError::new(key, format!("{t:?}"), "nothing: this model is not conditioned on text"))
            }
            _ => Ok(()),
        }
    }
}

/// What a run's end asks its family to export.
pub struct Export<'a> {
    /// The adapters' settings of a LoRA run; None: every weight trained.
    pub lora: Option<&'a LoraConfig>,
    /// How the run trained, as kohya's `ss_*` metadata (steps, learning rate, seed, ...), for
    /// files that carry it.
    pub record: &'a [(String, String)],
    /// The formats of a full fine-tune (`train.export`).
    pub formats: &'a [difforge_config::ExportFormat],
}

pub trait Family: Send + Sync {
    fn name(&self) -> &'static str;

    /// The shape (C, H, W) of one image in pixels.
    fn pixel_shape(&self) -> [i64; 3];

    /// Other image sides this family generates must be multiples of this; None: only its own
    /// size (a pixel UNet is trained at one size).
    fn size_multiple(&self) -> Option<i64> {
        None
    }

    /// Aspect-ratio bucket sides must be multiples of this; None: the family trains at one size
    /// and takes no buckets.
    fn bucket_step(&self) -> Option<i64> {
        None
    }

    /// What requests may ask for.
    fn condition_kind(&self) -> ConditionKind;

    /// Builds the denoising network under `p` (with LoRA adapters when `lora` is given).
    fn build_network(&self, p: &nn::Path, lora: Option<&LoraSpec>) -> Result<Box<dyn DenoiserNet>, ModelError>;

    /// Sets a freshly built network's starting weights: a family that starts from published
    /// weights loads them here; the others keep the seeded initialisation.
    fn init_network(&self, _vs: &nn::VarStore) -> Result<(), ModelError> {
        Ok(())
    }

    /// Between pixels and the network's space.
    fn codec(&self) -> Box<dyn Codec>;

    /// The network conditioning for one condition per image and, for guidance, its null
    /// counterpart (None when the model has nothing to guide with).
    fn encode(&self, conditions: &[Condition], device: Device) -> Result<(Conditioning, Option<Conditioning>), ModelError>;

    /// The training conditioning of a batch: each image's label (or caption), replaced by the
    /// null conditioning with probability `dropout` (so the model learns the unconditional
    /// prediction guidance needs). Draws from `rng` once per labelled image.
    fn training_conditioning(&self, batch: &Batch, dropout: f64, rng: &mut StreamRng, device: Device) -> Conditioning;

    /// The conditioning of fixed labels or captions (validation: never dropped), on the CPU.
    fn fixed_conditioning(&self, labels: &[i64], captions: &[Option<String>]) -> Conditioning;

    /// Checks a dataset against the model (e.g. more classes than the model has); returns notes
    /// worth printing.
    fn check_data(&self, set: &ImageSet) -> Result<Vec<String>, ConfigError>;

    /// The starting value of variable `name` of a fine-tune from the base's tensor: the base
    /// tensor itself, or grown where the family allows it (new classes).
    fn start_from_base(&self, name: &str, base: &Tensor, var: &Tensor, path: &Path) -> Result<Tensor, ModelError>;

    /// Whether an adapter with `lora` trains and carries variable `name`.
    fn adapter_carries(&self, lora: &LoraConfig, name: &str) -> bool;

    /// The prompts of preview grids (text-conditioned families).
    fn preview_prompts(&self) -> Vec<String> {
        Vec::new()
    }

    /// Counts a caption's tokens as the family's text encoder reads them, for the data check
    /// (None: the family reads no captions).
    fn caption_tokens(&self) -> Option<difforge_data::check::TokenCounter> {
        None
    }

    /// The published model the family starts from, if it has one.
    fn base_folder(&self) -> Option<PathBuf> {
        None
    }

    /// A cheap fingerprint of the published weights the network starts from (None without a
    /// base), recorded in checkpoints and checked when they are loaded.
    fn base_fingerprint(&self) -> Result<Option<String>, ModelError> {
        Ok(None)
    }

    /// Writes what a run trained (variable name, tensor: the LoRA adapters with `lora`, else
    /// every weight) into `dir` as the files the family's ecosystem loads, as `export` asks;
    /// returns them, the main one first. Families without such a format write none (difforge's
    /// checkpoints and adapter files are theirs).
    fn export_trained(&self, _trained: &[(String, Tensor)], _export: &Export, _dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
        Ok(Vec::new())
    }
}

/// The family a run config's model describes, with what it loads (a base's frozen parts) on
/// `device`.
pub fn family_of(run: &RunConfig, device: Device) -> Result<Box<dyn Family>, ModelError> {
    Ok(match &run.model {
        ModelConfig::PixelUnet(c) => Box::new(PixelUnetFamily::new(c.clone())),
        ModelConfig::StableDiffusion(c) => Box::new(StableDiffusionFamily::load(run, c, device)?),
    })
}

/// What a model config's requests may ask for, without loading anything.
pub fn condition_kind_of(config: &ModelConfig) -> ConditionKind {
    match config {
        ModelConfig::PixelUnet(c) if c.num_classes > 0 => ConditionKind::Classes(c.num_classes),
        ModelConfig::PixelUnet(_) => ConditionKind::Nothing,
        ModelConfig::StableDiffusion(_) => ConditionKind::Text,
    }
}
