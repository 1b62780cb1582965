//! `difforge sd init`: a new Stable Diffusion model to train from scratch (a trained VAE, fresh
//! UNet and text encoder).

use difforge_config::{NewSdModel, NewTokenizer};
use difforge_core::ConfigError;
use difforge_data::{DataConfig, SourceKind};
use difforge_model::stable_diffusion::scratch::{write_scratch_model, ScratchSpec};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum SdCommand {
    /// Write a new diffusers Stable Diffusion folder: the VAE of a `difforge vae train` run, a
    /// freshly initialised UNet2DConditionModel and CLIP text encoder, CLIP's tokenizer and SD
    /// 1.x's noise schedule. Train it with `model.family = "stable-diffusion"`, `model.base = OUT`.
    Init(SdInitArgs),
}

#[derive(clap::Args)]
pub struct SdInitArgs {
    /// The VAE: a diffusers AutoencoderKL folder (RUN/vae of `difforge vae train`).
    #[arg(long)]
    pub vae: PathBuf,
    /// Where to write the model (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    /// The training images' side in pixels (sets the UNet's sample size).
    #[arg(long, default_value_t = 32)]
    pub image_size: i64,
    /// UNet channels per level, comma-separated; every level has cross-attention.
    #[arg(long, value_delimiter = ',', default_values_t = [64, 128])]
    pub unet_channels: Vec<i64>,
    #[arg(long, default_value_t = 1)]
    pub layers_per_block: i64,
    #[arg(long, default_value_t = 4)]
    pub unet_heads: i64,
    #[arg(long, default_value_t = 16)]
    pub norm_groups: i64,
    /// The text encoder's width (the UNet's cross-attention dimension).
    #[arg(long, default_value_t = 64)]
    pub text_width: i64,
    #[arg(long, default_value_t = 2)]
    pub text_layers: i64,
    #[arg(long, default_value_t = 2)]
    pub text_heads: i64,
    /// "epsilon" or "v_prediction".
    #[arg(long, default_value = "epsilon")]
    pub prediction_type: String,
    /// Seeds the fresh weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// "clip" (CLIP's 49,408 tokens) or "learned" (CLIP's form with merges learnt from the
    /// captions of --captions: a few hundred tokens for a small caption set).
    #[arg(long, default_value = "clip")]
    pub tokenizer: String,
    /// The captioned images a learned tokenizer is made from (a folder, as data.source = "folder"
    /// reads it: caption sidecars or metadata.jsonl/csv).
    #[arg(long)]
    pub captions: Option<PathBuf>,
}

fn tokenizer_choice(name: &str) -> Result<NewTokenizer, ConfigError> {
    match name {
        "clip" => Ok(NewTokenizer::Clip),
        "learned" => Ok(NewTokenizer::Learned),
        other => Err(ConfigError::new("--tokenizer", format!("\"{other}\""), "\"clip\" or \"learned\"")),
    }
}

/// The captions of the folder `dir`, for a learned tokenizer.
fn folder_captions(dir: &std::path::Path, image_size: i64) -> anyhow::Result<Vec<String>> {
    let image_size = u32::try_from(image_size).map_err(|_| ConfigError::new("--image-size", image_size, "a positive size"))?;
    let data = DataConfig { source: SourceKind::Folder, path: Some(dir.to_path_buf()), image_size, channels: 3, ..DataConfig::default() };
    let captions: Vec<String> = difforge_data::source::load(&data)?.captions.into_iter().flatten().collect();
    if captions.is_empty() {
        return Err(ConfigError::new("--captions", dir.display(), "a folder of captioned images (.txt sidecars or metadata.jsonl)").into());
    }
    Ok(captions)
}

pub fn run(command: SdCommand) -> anyhow::Result<()> {
    let SdCommand::Init(a) = command;
    let tokenizer = tokenizer_choice(&a.tokenizer)?;
    let captions = match (tokenizer, &a.captions) {
        (NewTokenizer::Learned, Some(dir)) => folder_captions(dir, a.image_size)?,
        (NewTokenizer::Learned, None) => {
            return Err(ConfigError::problem("--captions", "needed with --tokenizer learned: the folder whose captions it learns").into())
        }
        (NewTokenizer::Clip, Some(_)) => return Err(ConfigError::problem("--captions", "only with --tokenizer learned").into()),
        (NewTokenizer::Clip, None) => Vec::new(),
    };
    let sizes = NewSdModel {
        vae: a.vae.clone(),
        unet_channels: a.unet_channels,
        layers_per_block: a.layers_per_block,
        unet_heads: a.unet_heads,
        norm_groups: a.norm_groups,
        text_width: a.text_width,
        text_layers: a.text_layers,
        text_heads: a.text_heads,
        tokenizer,
        seed: Some(a.seed),
    };
    let spec = ScratchSpec { sizes, captions, prediction_type: a.prediction_type, zero_terminal_snr: false, seed: a.seed };
    spec.validate(&|field| format!("--{}", field.replace('_', "-")))?;
    write_scratch_model(&a.vae, &spec, a.image_size, &a.out)?;
    println!("{}: a new Stable Diffusion model (VAE from {}, fresh UNet and text encoder)", a.out.display(), a.vae.display());
    Ok(())
}
