//! `difforge sd init`: a new Stable Diffusion model to train from scratch (a trained VAE, fresh
//! UNet and text encoder).

use difforge_config::NewSdModel;
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
}

pub fn run(command: SdCommand) -> anyhow::Result<()> {
    let SdCommand::Init(a) = command;
    let sizes = NewSdModel {
        vae: a.vae.clone(),
        unet_channels: a.unet_channels,
        layers_per_block: a.layers_per_block,
        unet_heads: a.unet_heads,
        norm_groups: a.norm_groups,
        text_width: a.text_width,
        text_layers: a.text_layers,
        text_heads: a.text_heads,
        seed: Some(a.seed),
    };
    let spec = ScratchSpec { sizes, prediction_type: a.prediction_type, seed: a.seed };
    spec.validate(&|field| format!("--{}", field.replace('_', "-")))?;
    write_scratch_model(&a.vae, &spec, a.image_size, &a.out)?;
    println!("{}: a new Stable Diffusion model (VAE from {}, fresh UNet and text encoder)", a.out.display(), a.vae.display());
    Ok(())
}
