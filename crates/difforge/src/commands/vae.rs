//! `difforge vae train`: the first stage of a text-to-image model trained from scratch; `difforge
//! vae reconstruct`: what a trained one keeps of its validation images.

use difforge_config::VaeRunConfig;
use difforge_core::ConfigError;
use difforge_train::vae::{train_vae, write_validation_reconstructions, VaeSummary, VaeTrainOptions};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum VaeCommand {
    /// Train an AutoencoderKL on a dataset ([data], [train] and [vae] of --config) and export it
    /// as a diffusers `vae/` folder with its scaling factor.
    Train(VaeTrainArgs),
    /// Write the reconstructions (posterior means, through the exported vae/ folder) of a
    /// finished run's validation images as PNG files, each with its original's caption beside
    /// it: what `difforge data judge` reads to tell what survives the VAE.
    Reconstruct(VaeReconstructArgs),
}

#[derive(clap::Args)]
pub struct VaeReconstructArgs {
    /// A finished `difforge vae train` run folder (it has vae/ and config.toml).
    #[arg(long)]
    pub run: PathBuf,
    /// The folder to write recon-NNNNN.png (and .txt) into.
    #[arg(long)]
    pub out: PathBuf,
    /// At most this many validation images, in the run's split order.
    #[arg(long, default_value_t = 200)]
    pub n: usize,
}

#[derive(clap::Args)]
pub struct VaeTrainArgs {
    /// A TOML VAE config ([data], [train], [vae]); see configs/shapes-vae.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a config key, e.g. --set train.steps=200 (repeatable; with --resume, [train] keys).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Run folder (default: runs/<config name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the VAE run in this folder from its newest good checkpoint, with its config.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["out", "config"])]
    pub resume: Option<PathBuf>,
    /// Replace the run already in --out.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(command: VaeCommand) -> anyhow::Result<()> {
    match command {
        VaeCommand::Train(args) => train(args),
        VaeCommand::Reconstruct(args) => reconstruct(args),
    }
}

fn train(args: VaeTrainArgs) -> anyhow::Result<()> {
    let (config, out_dir) = match (&args.resume, &args.config) {
        (Some(dir), _) => {
            let saved = dir.join("config.toml");
            if !saved.is_file() {
                return Err(ConfigError::new("--resume", dir.display(), "a VAE run folder (it has no config.toml)").into());
            }
            (VaeRunConfig::load(&saved, &args.sets)?, dir.clone())
        }
        (None, Some(path)) => {
            let name = path.file_stem().map_or("vae".to_string(), |s| s.to_string_lossy().into_owned());
            (VaeRunConfig::load(path, &args.sets)?, args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(name)))
        }
        (None, None) => return Err(ConfigError::new("--config", "(none)", "a VAE config file (e.g. configs/shapes-vae.toml), or --resume RUN_DIR").into()),
    };
    let stop = super::stop_on_signals()?;
    let opts = VaeTrainOptions { out_dir: out_dir.clone(), resume: args.resume.is_some(), overwrite: args.overwrite, stop };
    let summary = train_vae(config, opts)?;
    if args.json {
        super::print_json(&summary)?;
    } else {
        print_summary(&summary);
    }
    if summary.stopped_because.starts_with("diverged") {
        anyhow::bail!("VAE training {} (details in {})", summary.stopped_because, out_dir.join("metrics.jsonl").display());
    }
    Ok(())
}

fn reconstruct(args: VaeReconstructArgs) -> anyhow::Result<()> {
    if !args.run.join("vae/config.json").is_file() {
        return Err(ConfigError::new("--run", args.run.display(), "a finished VAE run folder (it has no vae/config.json)").into());
    }
    if args.n == 0 {
        return Err(ConfigError::new("--n", 0, "at least 1").into());
    }
    let written = write_validation_reconstructions(&args.run, &args.out, args.n)?;
    println!("{written} reconstructions in {}", args.out.display());
    Ok(())
}

pub(crate) fn print_summary(s: &VaeSummary) {
    println!("{}: step {}/{}, {}", s.run_dir.display(), s.final_step, s.steps_planned, s.stopped_because);
    println!("  loss (last step)               {:.5}", s.final_loss);
    println!("  wall time                      {:.1} s ({:.0} images/s on {}, {} threads)", s.wall_time_s, s.images_per_s, s.device, s.threads);
    println!("  parameters                     {} (latents {}x smaller per side)", s.parameters, s.downscale);
    if let Some(v) = &s.validation {
        println!("  validation ({} images)         loss {:.5}, PSNR {:.2} dB, SSIM {:.4}", v.images, v.loss, v.psnr, v.ssim);
    }
    if let Some(b) = &s.best {
        println!("  best validation                step {} (loss {:.5})", b.step, b.val_loss);
    }
    println!("  latents                        mean {:.4}, std {:.4} -> scaling_factor {:.5}", s.latents.mean, s.latents.std, s.scaling_factor);
    if let Some(fd) = s.fd_effnet {
        println!("  FD-EffNet (reconstructions)    {fd:.2}");
    }
    println!("  diffusers VAE                  {}", s.exported.display());
    if let Some(r) = &s.reconstructions {
        println!("  reconstructions                {}", r.display());
    }
    println!("  summary                        {}", s.run_dir.join("summary.json").display());
}
