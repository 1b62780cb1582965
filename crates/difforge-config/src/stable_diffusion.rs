//! The `[model]` settings of the Stable Diffusion family (`family = "stable-diffusion"`): a
//! published model as diffusers saves it, whose UNet the run fine-tunes (all of it, or LoRA
//! adapters with `[lora]`) while its VAE and (unless `train_text_encoder`) its text encoder stay
//! frozen. Or, with `[model.new]` instead of `base`, a model of its own made from scratch.

use crate::NewSdModel;
use difforge_core::ConfigError;
use difforge_data::DataConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StableDiffusionConfig {
    /// The model the run starts from: a diffusers folder (`model_index.json`, `unet/`, `vae/`,
    /// `text_encoder/`, `tokenizer/`, `scheduler/`), or a single .safetensors/.ckpt file (SD 1.x,
    /// 2.x, XL; converted once into a diffusers folder in difforge's cache). Empty with
    /// `[model.new]`.
    #[serde(default, skip_serializing_if = "is_empty")]
    pub base: PathBuf,
    /// With a single-file `base` (.safetensors or .ckpt): a diffusers folder of its architecture
    /// whose configs, tokenizers and scheduler go with its weights. Absent: the published
    /// architecture the file's keys show (SD 1.x, 2.x, XL), CLIP's built-in tokenizer and SD's
    /// DDIM schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_config: Option<PathBuf>,
    /// A new model instead of `base`: the VAE trained first (or given), then a fresh UNet and text
    /// encoder of these sizes (see `NewSdModel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<NewSdModel>,
    /// Side of the training images in pixels; 0 takes `data.image_size`.
    #[serde(default)]
    pub image_size: i64,
    /// Condition on an earlier layer of the text encoder (diffusers' `clip_skip`; 0: the last).
    #[serde(default)]
    pub clip_skip: usize,
    /// The prompts of the preview grids (one row each; empty: the empty prompt).
    #[serde(default)]
    pub preview_prompts: Vec<String>,
    /// A prompt file instead (kohya's format: a prompt per line with `--n` negative, `--d` seed,
    /// `--w`/`--h` size, `--s` steps, `--l` guidance); one row per line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_prompt_file: Option<PathBuf>,
    /// Shuffle a caption's comma-separated tags at every step (kohya's `shuffle_caption`), so
    /// the model does not learn their order.
    #[serde(default)]
    pub shuffle_caption: bool,
    /// With `shuffle_caption`: this many leading tags stay in place (kohya's `keep_tokens`,
    /// counted in tags), e.g. an instance token.
    #[serde(default)]
    pub keep_tokens: usize,
    /// Where the VAE latents of the training images are cached (content-addressed, shared by
    /// runs); none: encoded at every step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    /// Train the text encoder together with the UNet (every weight of both; SD 1.x/2.x bases,
    /// not with `[lora]`): how a model made with `difforge sd init` learns its own text side.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub train_text_encoder: bool,
}

fn is_empty(path: &std::path::Path) -> bool {
    path.as_os_str().is_empty()
}

/// A single-file checkpoint's name (.safetensors or .ckpt), as opposed to a diffusers folder.
pub fn is_single_file(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors") || e.eq_ignore_ascii_case("ckpt"))
}

impl StableDiffusionConfig {
    pub fn resolve(&mut self, data: &DataConfig) {
        if self.image_size == 0 {
            self.image_size = i64::from(data.image_size);
        }
    }

    pub fn validate(&self, data: &DataConfig) -> Result<(), ConfigError> {
        match (&self.new, self.base.as_os_str().is_empty()) {
            (None, true) => {
                return Err(ConfigError::problem(
                    "model.base",
                    "set it to a diffusers Stable Diffusion folder (with model_index.json), or describe a new model in [model.new]",
                ))
            }
            (Some(_), false) => return Err(ConfigError::new("model.base", self.base.display(), "nothing with [model.new] (a new model has no base)")),
            (Some(new), true) => {
                new.validate_section()?;
                if !self.train_text_encoder {
                    return Err(ConfigError::new("model.train_text_encoder", false, "true with [model.new]: a new text encoder starts random"));
                }
            }
            (None, false) => {}
        }
        if let Some(dir) = self.base_config.as_ref().filter(|_| !is_single_file(&self.base)) {
            return Err(ConfigError::new("model.base_config", dir.display(), "absent unless model.base is a single .safetensors or .ckpt file"));
        }
        if data.channels != 3 {
            return Err(ConfigError::new("data.channels", data.channels, "3: Stable Diffusion's VAE takes RGB images"));
        }
        if self.image_size != i64::from(data.image_size) {
            return Err(ConfigError::new("model.image_size", self.image_size, format!("the same as data.image_size ({})", data.image_size)));
        }
        if self.keep_tokens > 0 && !self.shuffle_caption {
            return Err(ConfigError::new("model.keep_tokens", self.keep_tokens, "0 unless model.shuffle_caption = true"));
        }
        if let (Some(file), false) = (&self.preview_prompt_file, self.preview_prompts.is_empty()) {
            return Err(ConfigError::new("model.preview_prompt_file", file.display(), "absent with model.preview_prompts (one source of preview prompts)"));
        }
        if self.clip_skip > 12 {
            return Err(ConfigError::new("model.clip_skip", self.clip_skip, "0..=12"));
        }
        Ok(())
    }
}
