//! Named Stable Diffusion architectures, for building a model without its files (benchmarks,
//! training from scratch) and for single files that do not say their configuration. Each
//! preset is the `config.json` text of the published diffusers folder it names, reduced to the
//! fields difforge reads, so that it can be checked against the source line by line.

use super::autoencoder_kl::AutoencoderKlConfig;
use super::clip_text::ClipTextConfig;
use super::unet_config::UNet2DConditionConfig;
use crate::error::NnError;

/// A preset's component configs: the UNet, the VAE and the text encoder(s).
#[derive(Debug, Clone)]
pub struct SdPreset {
    pub name: &'static str,
    pub unet: UNet2DConditionConfig,
    pub vae: AutoencoderKlConfig,
    pub text_encoders: Vec<ClipTextConfig>,
    /// diffusers' `prediction_type` of the preset's scheduler.
    pub prediction_type: &'static str,
}

pub const NAMES: &[&str] = &["sd15", "sd21", "sdxl"];

/// runwayml/stable-diffusion-v1-5 `unet/config.json`.
const SD15_UNET: &str = r#"{"act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
  "cross_attention_dim": 768, "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1,
  "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}"#;

/// stabilityai/stable-diffusion-2-1 `unet/config.json` (the 768-pixel v-prediction model).
const SD21_UNET: &str = r#"{"act_fn": "silu", "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280],
  "cross_attention_dim": 1024, "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1,
  "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 96, "upcast_attention": true, "use_linear_projection": true,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}"#;

/// stabilityai/stable-diffusion-xl-base-1.0 `unet/config.json`.
const SDXL_UNET: &str = r#"{"act_fn": "silu", "addition_embed_type": "text_time", "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
  "block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
  "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1,
  "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "projection_class_embeddings_input_dim": 2816, "sample_size": 128,
  "transformer_layers_per_block": [1, 2, 10], "use_linear_projection": true,
  "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]}"#;

/// The `vae/config.json` of SD 1.5 and 2.1 (SDXL's differs in its scaling factor, 0.13025).
const SD_VAE: &str = r#"{"act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D",
  "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"], "in_channels": 3, "latent_channels": 4, "layers_per_block": 2,
  "norm_num_groups": 32, "out_channels": 3, "sample_size": 512, "scaling_factor": 0.18215,
  "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]}"#;

/// `text_encoder/config.json` of SD 1.5 and SDXL (OpenAI CLIP ViT-L/14's text tower).
const CLIP_L: &str = r#"{"architectures": ["CLIPTextModel"], "bos_token_id": 0, "eos_token_id": 2, "hidden_act": "quick_gelu",
  "hidden_size": 768, "intermediate_size": 3072, "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "num_attention_heads": 12,
  "num_hidden_layers": 12, "pad_token_id": 1, "projection_dim": 768, "vocab_size": 49408}"#;

/// stabilityai/stable-diffusion-2-1 `text_encoder/config.json` (OpenCLIP ViT-H/14, its last layer dropped).
const OPENCLIP_H: &str = r#"{"architectures": ["CLIPTextModel"], "bos_token_id": 0, "eos_token_id": 2, "hidden_act": "gelu",
  "hidden_size": 1024, "intermediate_size": 4096, "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "num_attention_heads": 16,
  "num_hidden_layers": 23, "pad_token_id": 1, "projection_dim": 512, "vocab_size": 49408}"#;

/// stabilityai/stable-diffusion-xl-base-1.0 `text_encoder_2/config.json` (OpenCLIP ViT-bigG/14).
const OPENCLIP_BIGG: &str = r#"{"architectures": ["CLIPTextModelWithProjection"], "bos_token_id": 0, "eos_token_id": 2, "hidden_act": "gelu",
  "hidden_size": 1280, "intermediate_size": 5120, "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "num_attention_heads": 20,
  "num_hidden_layers": 32, "pad_token_id": 1, "projection_dim": 1280, "vocab_size": 49408}"#;

fn parse<T: serde::de::DeserializeOwned>(what: &str, json: &str) -> T {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("the built-in {what} config is valid JSON of its type: {e}"))
}

impl SdPreset {
    /// The preset with this name, or an error listing the names.
    pub fn named(name: &str) -> Result<SdPreset, NnError> {
        let mut vae: AutoencoderKlConfig = parse("VAE", SD_VAE);
        let (unet, encoders, prediction_type, name) = match name {
            "sd15" => (SD15_UNET, vec![CLIP_L], "epsilon", "sd15"),
            "sd21" => (SD21_UNET, vec![OPENCLIP_H], "v_prediction", "sd21"),
            "sdxl" => {
                vae.scaling_factor = 0.13025;
                (SDXL_UNET, vec![CLIP_L, OPENCLIP_BIGG], "epsilon", "sdxl")
            }
            other => return Err(NnError::Invalid(format!("no Stable Diffusion preset named {other:?} (expected {})", difforge_core::one_of(NAMES)))),
        };
        let text_encoders = encoders.into_iter().map(|json| parse("text encoder", json)).collect();
        Ok(SdPreset { name, unet: parse("UNet", unet), vae, text_encoders, prediction_type })
    }
}

/// The `config.json` texts a preset is made of, as its diffusers folder has them (reduced to
/// the fields difforge reads): for writing the preset out as a folder.
pub struct PresetJson {
    pub unet: &'static str,
    pub vae: serde_json::Value,
    pub text_encoders: Vec<&'static str>,
}

impl SdPreset {
    /// This preset's config texts.
    pub fn json(&self) -> PresetJson {
        let (unet, text_encoders) = match self.name {
            "sd21" => (SD21_UNET, vec![OPENCLIP_H]),
            "sdxl" => (SDXL_UNET, vec![CLIP_L, OPENCLIP_BIGG]),
            _ => (SD15_UNET, vec![CLIP_L]),
        };
        let mut vae: serde_json::Value = parse("VAE", SD_VAE);
        vae["scaling_factor"] = serde_json::json!(self.vae.scaling_factor);
        PresetJson { unet, vae, text_encoders }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_parses_and_checks() {
        for name in NAMES {
            let preset = SdPreset::named(name).unwrap();
            let levels = preset.unet.levels().unwrap();
            assert_eq!(levels.last().unwrap().context_dim, preset.text_encoders.iter().map(|t| t.hidden_size).sum::<i64>(), "{name}");
            preset.vae.validate().unwrap();
            preset.text_encoders.iter().for_each(|t| t.validate().unwrap());
        }
        // Building them allocates gigabytes; `difforge bench --model sd15` builds one and prints
        // its parameter count beside diffusers' (tools/bench_sd.py).
        assert!(SdPreset::named("sd3").unwrap_err().to_string().contains("\"sd15\""));
    }

    #[test]
    fn a_presets_json_reads_back_as_the_preset() {
        for name in NAMES {
            let preset = SdPreset::named(name).unwrap();
            let json = preset.json();
            let vae: AutoencoderKlConfig = serde_json::from_value(json.vae).unwrap();
            assert_eq!(vae.scaling_factor, preset.vae.scaling_factor, "{name}");
            let encoders: Vec<ClipTextConfig> = json.text_encoders.iter().map(|t| parse("text encoder", t)).collect();
            assert_eq!(encoders, preset.text_encoders, "{name}");
            let unet: UNet2DConditionConfig = parse("UNet", json.unet);
            assert_eq!(unet.block_out_channels, preset.unet.block_out_channels, "{name}");
        }
    }
}
