//! `difforge sample`, and the checkpoint loading and sampler overrides it shares with other
//! commands.

use crate::cli::{SampleArgs, SamplerArgs, SamplingArgs, TextPromptArgs};
use anyhow::Context;
use difforge_config::RunConfig;
use difforge_core::ConfigError;
use difforge_diffusion::{SamplerConfig, SamplerKind, StartNoise};
use difforge_model::generate::{classes_in_turn, grid_metadata, image_metadata};
use difforge_model::images::{save_each_with_text, save_grid_with_text};
use difforge_model::{checkpoint, generate, Condition, DiffusionModel, GenerateSpec, Weights};
use serde::Serialize;

/// The flag that overrides a `[sample]` key, for error messages.
fn sampler_flag(key: &str) -> Option<&'static str> {
    match key {
        "sample.sampler" => Some("--sampler"),
        "sample.steps" => Some("--steps"),
        "sample.guidance" => Some("--guidance"),
        "sample.eta" => Some("--eta"),
        "sample.guidance_interval" => Some("--guidance-interval"),
        "sample.guidance_rescale" => Some("--guidance-rescale"),
        _ => None,
    }
}

/// Prepares the device a command asks for with `--device`, with the run's other device settings
/// (threads, CPU kernels).
pub fn device(flag: &str, train: &difforge_config::TrainConfig) -> Result<tch::Device, ConfigError> {
    use difforge_model::device::{prepare, DeviceSettings};
    prepare(&DeviceSettings { key: "--device", device: flag, trains: false, ..DeviceSettings::of_run(train) })
}

/// Loads the checkpoint named by `--checkpoint` (with its adapter) and the sampler settings.
pub fn load(args: &SamplingArgs) -> anyhow::Result<(DiffusionModel, SamplerConfig, std::path::PathBuf)> {
    let dir = checkpoint::resolve(&args.checkpoint)?;
    let cfg = checkpoint::read_config(&dir)?;
    let dev = device(&args.device, &cfg.train)?;
    if !(args.lora_scale.is_finite() && (-10.0..=10.0).contains(&args.lora_scale)) {
        return Err(ConfigError::new("--lora-scale", args.lora_scale, "a number in -10..=10").into());
    }
    let model = match args.lora.as_slice() {
        [adapter] => difforge_model::adapter::load_with_adapter(&dir, adapter, args.lora_scale, dev)?,
        [] => checkpoint::load_model(&dir, &cfg, dev).with_context(|| format!("loading {}", dir.display()))?,
        [_, second, ..] => return Err(ConfigError::new("--lora", second.display(), "one adapter: a pixel model takes a single --lora").into()),
    };
    let sampler = sampler_config(&args.sampler, &cfg)?;
    Ok((model, sampler, dir))
}

/// The run's [sample] settings with the command line's overrides, checked; errors name the flag.
pub fn sampler_config(args: &SamplerArgs, cfg: &RunConfig) -> Result<SamplerConfig, ConfigError> {
    let mut sampler = cfg.sample.clone();
    if let Some(name) = &args.sampler {
        sampler.sampler = SamplerKind::parse(name).ok_or_else(|| ConfigError::new("--sampler", name, SamplerKind::expected()))?;
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
    if let Some(interval) = &args.guidance_interval {
        sampler.guidance_interval = parse_interval(interval)?;
    }
    if let Some(r) = args.guidance_rescale {
        sampler.guidance_rescale = r;
    }
    sampler.cuda_graphs |= args.cuda_graphs;
    sampler.validate(cfg.diffusion.timesteps).map_err(|e| e.rename_key(sampler_flag))?;
    Ok(sampler)
}

/// The starting noise `--noise` asks for, if given (clap has checked the name).
pub fn start_noise(text: &TextPromptArgs) -> Option<StartNoise> {
    text.noise.as_deref().and_then(<StartNoise as difforge_core::Choice>::parse)
}

/// The text flags only a published Stable Diffusion model takes: a run has its own (its config's
/// `model.clip_skip`, scheduler and prediction, its training size).
fn refuse_published_only_flags(text: &TextPromptArgs) -> Result<(), ConfigError> {
    let given = [
        ("--prompts", text.prompts.is_some()),
        ("--size", text.size.is_some()),
        ("--clip-skip", text.clip_skip != 0),
        ("--config", text.config.is_some()),
        ("--prediction", text.prediction.is_some()),
    ];
    match given.iter().find(|(_, g)| *g) {
        Some((flag, _)) => {
            Err(ConfigError::new(*flag, "(given)", "nothing: this checkpoint is a difforge run, which has its own (use --prompt, at its training size)"))
        }
        None => Ok(()),
    }
}

/// `LO,HI` or `all`.
fn parse_interval(s: &str) -> Result<Option<[f64; 2]>, ConfigError> {
    if s == "all" {
        return Ok(None);
    }
    let bad = || ConfigError::new("--guidance-interval", s, "LO,HI (two noise levels sigma) or all");
    let (lo, hi) = s.split_once(',').ok_or_else(bad)?;
    Ok(Some([lo.trim().parse().map_err(|_| bad())?, hi.trim().parse().map_err(|_| bad())?]))
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
    // Pixel checkpoints are folders; a file is a Stable Diffusion single-file checkpoint.
    if difforge_model::stable_diffusion::is_diffusers_folder(&args.sampling.checkpoint) || args.sampling.checkpoint.is_file() {
        return super::text_to_image::run(&args);
    }
    refuse_published_only_flags(&args.text)?;
    let n = args.n.unwrap_or(16);
    if !(1..=4096).contains(&n) {
        return Err(ConfigError::new("--n", n, "1..=4096").into());
    }
    let (model, mut sampler, dir) = load(&args.sampling)?;
    if let Some(noise) = start_noise(&args.text) {
        sampler.noise = noise;
    }
    let kind = model.family().condition_kind();
    let negatives = match &args.text.negative_prompt {
        Some(negative) => {
            let condition = Condition::Text(negative.clone());
            kind.check("--negative-prompt", &condition)?;
            vec![condition; n]
        }
        None => Vec::new(),
    };
    let conditions = match (args.class, &args.text.prompt) {
        (Some(c), _) => {
            kind.check("--class", &Condition::Class(c))?;
            vec![Condition::Class(c); n]
        }
        (None, Some(prompt)) => {
            let condition = Condition::Text(prompt.clone());
            kind.check("--prompt", &condition)?;
            vec![condition; n]
        }
        (None, None) => classes_in_turn(kind, n),
    };
    let seeds = (0..n as u64).map(|i| args.sampling.seed + i).collect();
    let start = std::time::Instant::now();
    let spec = GenerateSpec {
        conditions,
        seeds,
        sampler: &sampler,
        weights: Weights::ema(!args.sampling.raw),
        max_batch: 256,
        fixed_batch: false,
        negatives,
        size: None,
    };
    let images = generate(&model, &spec)?;
    let seconds = start.elapsed().as_secs_f64();
    let columns = (n as f64).sqrt().ceil() as usize;
    // The model by its training step, not its path: a run folder and its checkpoint folder give
    // the same bytes.
    let step = checkpoint::read_state(&dir)?.step;
    let about = serde_json::json!({ "step": step, "weights": if args.sampling.raw { "raw" } else { "ema" } });
    let meta = grid_metadata(&spec, columns, about.clone());
    save_grid_with_text(&images, columns, &[("difforge", meta)], &args.out).with_context(|| format!("writing {}", args.out.display()))?;
    let files = match &args.out_dir {
        Some(d) => save_each_with_text(&images, d, "sample-", |i| vec![("difforge", image_metadata(&spec, i, about.clone()))])
            .with_context(|| format!("writing into {}", d.display()))?,
        None => Vec::new(),
    };
    let report = SampleReport {
        checkpoint: dir,
        images: n,
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
