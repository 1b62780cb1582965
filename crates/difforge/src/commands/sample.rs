//! `difforge sample`, and the checkpoint loading it shares with other commands.

use crate::cli::{SampleArgs, SamplerArgs, SamplingArgs};
use anyhow::Context;
use difforge_diffusion::{SamplerConfig, SamplerKind};
use difforge_train::generate::{generate, save_each, save_grid, GenerateSpec};
use difforge_train::{checkpoint, DiffusionModel};
use serde::Serialize;

/// Loads the checkpoint named by `--checkpoint` and the sampler settings, with overrides.
pub fn load(args: &SamplingArgs) -> anyhow::Result<(DiffusionModel, SamplerConfig, std::path::PathBuf)> {
    let dir = checkpoint::resolve(&args.checkpoint)?;
    let cfg = checkpoint::read_config(&dir)?;
    let device = difforge_train::trainer::device_for(&args.device, cfg.train.threads)?;
    let model = match &args.lora {
        Some(adapter) => difforge_train::adapter::load_with_adapter(&dir, adapter, args.lora_scale, device)?,
        None => checkpoint::load_model(&dir, &cfg, device).with_context(|| format!("loading {}", dir.display()))?,
    };
    let sampler = sampler_config(&args.sampler, &cfg)?;
    Ok((model, sampler, dir))
}

/// The run's [sample] settings with the command line's overrides, checked.
pub fn sampler_config(args: &SamplerArgs, cfg: &difforge_train::RunConfig) -> anyhow::Result<SamplerConfig> {
    let mut sampler = cfg.sample.clone();
    if let Some(name) = &args.sampler {
        sampler.sampler = SamplerKind::parse(name).ok_or_else(|| anyhow::anyhow!("--sampler {name}: expected ddpm, ddim or dpm++2m"))?;
    }
    if let Some(s) = args.steps {
        sampler.steps = s;
    }
    if let Some(g) = args.guidance {
        sampler.guidance = g;
    }
    if let Some(e) = args.eta {
        sampler.eta = e;
    }
    sampler.validate(cfg.diffusion.timesteps).map_err(|e| anyhow::anyhow!("{}", e.replace("sample.", "--")))?;
    Ok(sampler)
}

#[derive(Serialize)]
struct SampleReport {
    checkpoint: std::path::PathBuf,
    images: usize,
    sampler: &'static str,
    steps: usize,
    guidance: f64,
    seed: u64,
    seconds: f64,
    grid: std::path::PathBuf,
    files: Vec<std::path::PathBuf>,
}

pub fn run(args: SampleArgs) -> anyhow::Result<()> {
    if args.n == 0 || args.n > 4096 {
        anyhow::bail!("--n {}: expected 1..=4096", args.n);
    }
    let (model, sampler, dir) = load(&args.sampling)?;
    let k = model.config.model.num_classes;
    let classes = match (k, args.class) {
        (0, Some(_)) => anyhow::bail!("--class: this model is unconditional (model.num_classes = 0)"),
        (0, None) => None,
        (_, Some(c)) if c < 0 || c >= k => anyhow::bail!("--class {c}: expected 0..={}", k - 1),
        (_, Some(c)) => Some(vec![c; args.n]),
        (_, None) => Some((0..args.n as i64).map(|i| i % k).collect()),
    };
    let seeds = (0..args.n as u64).map(|i| args.sampling.seed + i).collect();
    let start = std::time::Instant::now();
    let spec = GenerateSpec { classes, seeds, sampler: &sampler, use_ema: !args.sampling.raw, max_batch: 256, fixed_batch: false };
    let images = generate(&model, &spec);
    let seconds = start.elapsed().as_secs_f64();
    let columns = (args.n as f64).sqrt().ceil() as usize;
    save_grid(&images, columns, &args.out).with_context(|| format!("writing {}", args.out.display()))?;
    let files = match &args.out_dir {
        Some(d) => save_each(&images, d, "sample-").with_context(|| format!("writing into {}", d.display()))?,
        None => Vec::new(),
    };
    let report = SampleReport {
        checkpoint: dir,
        images: args.n,
        sampler: sampler.sampler.name(),
        steps: sampler.steps,
        guidance: sampler.guidance,
        seed: args.sampling.seed,
        seconds,
        grid: args.out.clone(),
        files,
    };
    if args.json {
        return super::print_json(&report);
    }
    println!(
        "{} images ({} {} steps, guidance {}) in {:.1} s -> {}",
        report.images,
        report.sampler,
        report.steps,
        report.guidance,
        seconds,
        args.out.display()
    );
    Ok(())
}
