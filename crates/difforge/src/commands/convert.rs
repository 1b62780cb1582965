//! `difforge convert`: a Stable Diffusion model between a diffusers folder and a single-file
//! checkpoint (original tensor names, as the webuis and most downloads use). The source is
//! loaded strictly into the networks first, so a converted model is a complete one; the output
//! is written under a temporary name and renamed, never over an existing path.

use anyhow::Context;
use difforge_core::ConfigError;
use difforge_model::stable_diffusion::components::Networks;
use difforge_model::stable_diffusion::{is_diffusers_folder, Family};
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/).
    Diffusers,
    /// One .safetensors file with the original (CompVis / SGM / OpenCLIP) tensor names.
    SingleFile,
}

#[derive(clap::Args)]
pub struct ConvertArgs {
    /// The model: a diffusers folder, or a single-file checkpoint (.safetensors, .ckpt, .pt).
    #[arg(long)]
    pub from: PathBuf,
    /// What to write.
    #[arg(long, value_enum)]
    pub to: Format,
    /// Where: a folder (diffusers) or a .safetensors file (single-file). It must not exist.
    #[arg(long)]
    pub out: PathBuf,
    /// For a single-file --from: a diffusers folder of the same architecture, whose
    /// */config.json describe the networks and whose tokenizers and scheduler (epsilon or
    /// v-prediction) go with them.
    #[arg(long, value_name = "DIR")]
    pub config: Option<PathBuf>,
    /// Single-file output in float16 (half the size); float32 otherwise.
    #[arg(long)]
    pub half: bool,
}

pub fn run(args: &ConvertArgs) -> anyhow::Result<()> {
    check_args(args)?;
    let (networks, config_dir) = load(args)?;
    let family = Family::of(&networks);
    match args.to {
        Format::Diffusers => networks.write_diffusers(&config_dir, &args.out),
        Format::SingleFile => networks.write_single_file(family, &args.out, if args.half { Kind::Half } else { Kind::Float }),
    }
    .with_context(|| format!("writing {}", args.out.display()))?;
    let format = if args.to == Format::Diffusers { "a diffusers folder" } else { "a single file" };
    println!("wrote {} ({} model, {format})", args.out.display(), family.name());
    Ok(())
}

/// Refuses what would fail only after the model is loaded.
fn check_args(args: &ConvertArgs) -> Result<(), ConfigError> {
    if args.out.exists() {
        return Err(ConfigError::new("--out", args.out.display(), "a path that does not exist yet (nothing is overwritten)"));
    }
    let safetensors = args.out.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    if args.to == Format::SingleFile && !safetensors {
        return Err(ConfigError::new("--out", args.out.display(), "a .safetensors file for --to single-file"));
    }
    if args.half && args.to != Format::SingleFile {
        return Err(ConfigError::problem("--half", "only with --to single-file (diffusers folders are written in float32)"));
    }
    Ok(())
}

/// The source's networks (on the CPU) and the folder whose configs, tokenizers and scheduler
/// describe them.
fn load(args: &ConvertArgs) -> anyhow::Result<(Networks, PathBuf)> {
    let from = &args.from;
    if from.is_dir() {
        if let Some(what) = difforge_model::stable_diffusion::pipeline::unsupported_pipeline(from) {
            return Err(ConfigError::new("--from", from.display(), format!("a folder difforge loads; this is {what}")).into());
        }
        if !is_diffusers_folder(from) {
            return Err(ConfigError::new("--from", from.display(), "a diffusers folder (with model_index.json and unet/) or a single-file checkpoint").into());
        }
        if args.config.is_some() {
            return Err(ConfigError::problem("--config", "only with a single-file --from (a diffusers folder has its own configs)").into());
        }
        let networks = Networks::load_diffusers(from, Device::Cpu).with_context(|| format!("loading {}", from.display()))?;
        return Ok((networks, from.clone()));
    }
    let config = config_dir(args.config.as_deref())?;
    let (_, networks) = Networks::load_single_file(from, config, Device::Cpu).with_context(|| format!("loading {}", from.display()))?;
    Ok((networks, config.to_path_buf()))
}

fn config_dir(config: Option<&Path>) -> Result<&Path, ConfigError> {
    let config = config.ok_or_else(|| ConfigError::problem("--config", "a single file holds weights only: give a diffusers folder of its architecture"))?;
    if !is_diffusers_folder(config) {
        return Err(ConfigError::new("--config", config.display(), "a diffusers folder (with model_index.json and unet/)"));
    }
    Ok(config)
}
