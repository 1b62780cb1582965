//! A Stable Diffusion model of one's own, before training: a diffusers folder with a trained VAE
//! (from `difforge vae train`), a freshly initialised UNet2DConditionModel and CLIP text encoder
//! of a chosen size, CLIP's tokenizer (built into the binary) and SD 1.x's noise schedule. The
//! Stable Diffusion family then trains it like any base (`model.base`, full fine-tune), and
//! diffusers' StableDiffusionPipeline loads it, before and after.

use super::components::{refuse_existing, temporary_sibling, Networks, Part};
use crate::error::ModelError;
use difforge_config::{NewSdModel, NewTokenizer};
use difforge_core::ConfigError;
use difforge_nn::sd::autoencoder_kl::AutoencoderKlConfig;
use difforge_nn::sd::load::{load_component, read_config};
use difforge_nn::sd::tokenizer::ClipTokenizer;
use serde_json::json;
use std::path::Path;
use tch::Device;

/// At most this many merges are learnt for a `tokenizer = "learned"` model (CLIP has 48,894).
const MAX_LEARNED_MERGES: usize = 10_000;
/// The diffusers and transformers versions whose config formats this writes.
const DIFFUSERS_VERSION: &str = "0.35.2";
const TRANSFORMERS_VERSION: &str = "4.57.1";

/// What the new model is: its networks' sizes (a `[model.new]` section; its `vae` is not read
/// here), its prediction and the seed of its fresh weights.
#[derive(Debug, Clone)]
pub struct ScratchSpec {
    pub sizes: NewSdModel,
    /// The training captions a learned tokenizer is made from (unused with CLIP's).
    pub captions: Vec<String>,
    /// "epsilon" or "v_prediction".
    pub prediction_type: String,
    /// A zero-terminal-SNR schedule (`rescale_betas_zero_snr`, sampled with trailing spacing).
    pub zero_terminal_snr: bool,
    pub seed: u64,
}

impl ScratchSpec {
    /// Checks that the networks build; `key` names a size's field (a config key or a flag).
    pub fn validate(&self, key: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        self.sizes.validate(key)?;
        if !["epsilon", "v_prediction"].contains(&self.prediction_type.as_str()) {
            return Err(ConfigError::new(key("prediction_type"), &self.prediction_type, "\"epsilon\" or \"v_prediction\""));
        }
        Ok(())
    }

    fn unet_config(&self, latent_channels: i64, sample_size: i64) -> serde_json::Value {
        let levels = self.sizes.unet_channels.len();
        json!({
            "_class_name": "UNet2DConditionModel",
            "_diffusers_version": DIFFUSERS_VERSION,
            "act_fn": "silu",
            "attention_head_dim": self.sizes.unet_heads,
            "block_out_channels": self.sizes.unet_channels,
            "center_input_sample": false,
            "cross_attention_dim": self.sizes.text_width,
            "down_block_types": vec!["CrossAttnDownBlock2D"; levels],
            "downsample_padding": 1,
            "flip_sin_to_cos": true,
            "freq_shift": 0,
            "in_channels": latent_channels,
            "layers_per_block": self.sizes.layers_per_block,
            "mid_block_scale_factor": 1,
            "mid_block_type": "UNetMidBlock2DCrossAttn",
            "norm_eps": 1e-5,
            "norm_num_groups": self.sizes.norm_groups,
            "out_channels": latent_channels,
            "sample_size": sample_size,
            "transformer_layers_per_block": 1,
            "up_block_types": vec!["CrossAttnUpBlock2D"; levels],
            "upcast_attention": false,
            "use_linear_projection": false,
        })
    }

    /// The text encoder for a vocabulary of `vocab_size` tokens, the last two the start and end
    /// tokens (as in CLIP's).
    fn text_config(&self, vocab_size: usize) -> serde_json::Value {
        let vocab_size = vocab_size as i64;
        json!({
            "architectures": ["CLIPTextModel"],
            "attention_dropout": 0.0,
            "bos_token_id": vocab_size - 2,
            "eos_token_id": vocab_size - 1,
            "hidden_act": "quick_gelu",
            "hidden_size": self.sizes.text_width,
            "initializer_factor": 1.0,
            "initializer_range": 0.02,
            "intermediate_size": 4 * self.sizes.text_width,
            "layer_norm_eps": 1e-5,
            "max_position_embeddings": 77,
            "model_type": "clip_text_model",
            "num_attention_heads": self.sizes.text_heads,
            "num_hidden_layers": self.sizes.text_layers,
            "pad_token_id": 1,
            "projection_dim": self.sizes.text_width,
            "torch_dtype": "float32",
            "transformers_version": TRANSFORMERS_VERSION,
            "vocab_size": vocab_size,
        })
    }

    fn scheduler_config(&self) -> serde_json::Value {
        // SD 1.x's training schedule (its scheduler_config.json), with this model's prediction.
        json!({
            "_class_name": "DDIMScheduler",
            "_diffusers_version": DIFFUSERS_VERSION,
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "clip_sample": false,
            "num_train_timesteps": 1000,
            "prediction_type": self.prediction_type,
            "rescale_betas_zero_snr": self.zero_terminal_snr,
            "set_alpha_to_one": false,
            // Leading spacing never reaches the last timestep, where a zero-terminal-SNR model
            // starts (diffusers' advice for such schedules: trailing).
            "steps_offset": if self.zero_terminal_snr { 0 } else { 1 },
            "timestep_spacing": if self.zero_terminal_snr { "trailing" } else { "leading" },
            "trained_betas": null,
        })
    }
}

fn model_index() -> serde_json::Value {
    json!({
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "feature_extractor": [null, null],
        "image_encoder": [null, null],
        "requires_safety_checker": false,
        "safety_checker": [null, null],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    })
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), ModelError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    }
    let text = serde_json::to_string_pretty(value).map_err(|e| ModelError::Other(e.to_string()))?;
    difforge_core::write_atomic(path, text.as_bytes()).map_err(|e| ModelError::io(path, e))
}

/// Writes the new model at `out` (which must not exist): `vae_dir`'s VAE, fresh UNet and text
/// encoder of `spec`'s sizes. The UNet's `sample_size` is `image_size` over the VAE's downscale.
/// Writes the new model's tokenizer folder; returns its vocabulary's size.
fn write_tokenizer(spec: &ScratchSpec, dir: &Path) -> Result<usize, ModelError> {
    Ok(match spec.sizes.tokenizer {
        NewTokenizer::Clip => ClipTokenizer::write_embedded(dir)?,
        NewTokenizer::Learned if spec.captions.is_empty() => {
            return Err(ModelError::Config(ConfigError::problem("model.new.tokenizer", "\"learned\" needs captions: the training images have none")));
        }
        NewTokenizer::Learned => {
            let size = ClipTokenizer::write_learned(dir, &spec.captions, MAX_LEARNED_MERGES)?;
            tracing::info!("learned a tokenizer of {size} tokens from {} captions", spec.captions.len());
            size
        }
    })
}

/// Checks a run's `[diffusion]` against the schedule a new model of `spec` gets, before any stage
/// trains (a model written at `out` would be refused by it later).
pub fn check_schedule(spec: &ScratchSpec, out: &Path, d: &difforge_diffusion::DiffusionConfig) -> Result<(), ModelError> {
    let cfg: super::SchedulerConfig =
        serde_json::from_value(spec.scheduler_config()).map_err(|e| ModelError::Other(format!("the new model's scheduler: {e}")))?;
    crate::family::stable_diffusion::check_schedule_of(&cfg, &out.join("scheduler/scheduler_config.json"), d)
}

/// `spec` is validated by the caller, whose error names its keys.
pub fn write_scratch_model(vae_dir: &Path, spec: &ScratchSpec, image_size: i64, out: &Path) -> Result<(), ModelError> {
    refuse_existing(out)?;
    let vae: AutoencoderKlConfig = read_config(vae_dir)
        .map_err(|e| ModelError::Config(ConfigError::new("--vae", vae_dir.display(), format!("a diffusers AutoencoderKL folder ({e})"))))?;
    let downscale = 1i64 << (vae.block_out_channels.len().max(1) - 1);
    if image_size < 1 || image_size % (downscale << (spec.sizes.unet_channels.len() - 1)) != 0 {
        let expected = format!("a multiple of {} (the VAE's downscale {downscale} times the UNet's)", downscale << (spec.sizes.unet_channels.len() - 1));
        return Err(ModelError::Config(ConfigError::new("--image-size", image_size, expected)));
    }
    let configs = temporary_sibling(&out.with_extension("configs"))?;
    let result = (|| {
        write_json(&configs.join("model_index.json"), &model_index())?;
        write_json(&configs.join("scheduler/scheduler_config.json"), &spec.scheduler_config())?;
        write_json(&configs.join("unet/config.json"), &spec.unet_config(vae.latent_channels, image_size / downscale))?;
        let vocab_size = write_tokenizer(spec, &configs.join("tokenizer"))?;
        write_json(&configs.join("text_encoder/config.json"), &spec.text_config(vocab_size))?;
        let vae_config = std::fs::read(vae_dir.join("config.json")).map_err(|e| ModelError::io(vae_dir.join("config.json"), e))?;
        std::fs::create_dir_all(configs.join("vae")).map_err(|e| ModelError::io(configs.join("vae"), e))?;
        std::fs::write(configs.join("vae/config.json"), vae_config).map_err(|e| ModelError::io(configs.join("vae/config.json"), e))?;
        tch::manual_seed((difforge_core::derive_seed(spec.seed, difforge_core::Stream::Init, 0) >> 1) as i64);
        let networks = Networks::build(&configs, Device::Cpu)?;
        load_component(&networks.vae.vars, vae_dir, Part::Vae.stem(), None)?;
        networks.write_diffusers(&configs, out)
    })();
    let _ = std::fs::remove_dir_all(&configs);
    result
}
