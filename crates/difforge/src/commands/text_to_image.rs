//! `difforge sample --checkpoint <diffusers folder or single file> --prompt ...`: text-to-image
//! with a Stable Diffusion model as diffusers saves it or as one original-format file. Images are written one PNG each with the prompt and
//! settings in text chunks (`parameters` in the webui's format, `difforge` as JSON).

use crate::cli::{SampleArgs, SamplerArgs, SamplingArgs, TextPromptArgs};
use anyhow::Context;
use difforge_core::ConfigError;
use difforge_diffusion::{NoiseSource, SamplerConfig, SamplerKind, StartNoise, TrajectoryStep};
use difforge_model::generate::images_metadata;
use difforge_model::images::{save_grid_with_text, save_png_with_text};
use difforge_model::stable_diffusion::{Generation, LoraReport, StableDiffusion, TextToImage};
use difforge_model::Condition;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// At most this many prompts per run, and images per prompt.
const MAX_PROMPTS: usize = 10_000;
/// A prompt file is read up to this size (10,000 long prompts), never a whole stream.
const MAX_PROMPT_FILE_BYTES: u64 = 16 << 20;
const MAX_PER_PROMPT: usize = 64;
/// Up to this many images are also drawn on one contact sheet at `--out`.
const MAX_SHEET: usize = 64;

pub fn run(args: &SampleArgs) -> anyhow::Result<()> {
    refuse_pixel_flags(args)?;
    let dir = &args.sampling.checkpoint;
    let prompts = prompts(&args.text)?;
    let per_prompt = args.n.unwrap_or(1);
    if !(1..=MAX_PER_PROMPT).contains(&per_prompt) {
        return Err(ConfigError::new("--n", per_prompt, format!("1..={MAX_PER_PROMPT} images per prompt")).into());
    }
    // diffusers' noise unless asked otherwise: a seed gives the image it gives there.
    let noise = super::sample::start_noise(&args.text).unwrap_or(StartNoise::Torch);
    let loras = lora_choices(&args.sampling)?;
    let device = super::sample::device(&args.sampling.device, &difforge_config::TrainConfig::default())?;
    let mut sd = load(args, device).with_context(|| format!("loading {}", dir.display()))?;
    let mut merged = Vec::with_capacity(loras.len());
    for lora in &loras {
        let report = sd.apply_lora(&lora.path, lora.scale).with_context(|| format!("applying the LoRA {}", lora.path.display()))?;
        eprintln!("LoRA {report}");
        merged.push(report);
    }
    if let Some(note) = &sd.scheduling.substitute {
        eprintln!("note: {note}");
    }
    let (width, height) = size(args.text.size.as_deref(), sd.default_size())?;
    sd.check_size(width, height)?;
    let sampler = sampler_config(&args.sampling.sampler, &sd)?;
    let negative = args.text.negative_prompt.as_deref();
    let start = std::time::Instant::now();
    let mut files = Vec::new();
    let mut all_images = Vec::new();
    let mut all_seeds = Vec::new();
    let total = prompts.len() * per_prompt;
    let mut progress = difforge_core::progress::Progress::new("generating", (total * sampler.steps) as u64, 0);
    for (j, prompt) in prompts.iter().enumerate() {
        let (ids, warnings) = sd.tokenize(prompt, negative, per_prompt)?;
        for warning in warnings {
            eprintln!("warning: {warning}");
        }
        let seeds: Vec<u64> = (0..per_prompt as u64).map(|k| args.sampling.seed + (j * per_prompt) as u64 + k).collect();
        let source = NoiseSource::new(seeds.clone(), sd.latent_shape(width, height), device).with_start(noise);
        let req = TextToImage { ids: &ids, width, height, sampler: &sampler, noise: &source, clip_skip: args.text.clip_skip };
        let done = (j * per_prompt * sampler.steps) as u64;
        let mut observe = |step: TrajectoryStep| progress.update(done + ((step.index + 1) * per_prompt) as u64, prompt);
        let images = sd.generate(&req, Some(&mut observe))?;
        for (k, &seed) in seeds.iter().enumerate() {
            let path = output_path(&args.out, j * per_prompt + k, total);
            let settings = Settings {
                prompt,
                negative: negative.unwrap_or(""),
                seed,
                width,
                height,
                sampler: &sampler,
                clip_skip: args.text.clip_skip,
                noise: noise.name(),
                model: dir,
                loras: &loras,
            };
            save_png_with_text(&images, k as i64, &settings.chunks(), &path).with_context(|| format!("writing {}", path.display()))?;
            files.push(path);
        }
        if total <= MAX_SHEET {
            all_images.push(images);
            all_seeds.extend(seeds);
        }
    }
    progress.finish();
    let sheet = (1 < total && total <= MAX_SHEET).then(|| args.out.clone());
    if sheet.is_some() {
        // Several images: each in its own file, and all of them on one sheet at --out.
        let conditions: Vec<Condition> = prompts.iter().flat_map(|p| std::iter::repeat_n(Condition::Text(p.clone()), per_prompt)).collect();
        let negatives = negative.map_or_else(Vec::new, |n| vec![Condition::Text(n.to_string()); total]);
        let columns = if prompts.len() > 1 { per_prompt } else { (total as f64).sqrt().ceil() as usize };
        let about = serde_json::json!({ "checkpoint": dir, "width": width, "height": height, "clip_skip": args.text.clip_skip });
        let meta = images_metadata(&conditions, &all_seeds, &negatives, &sampler, columns, about);
        let sheet = tch::Tensor::cat(&all_images, 0);
        save_grid_with_text(&sheet, columns, &[("difforge", meta)], &args.out).with_context(|| format!("writing {}", args.out.display()))?;
    }
    let report = Report {
        checkpoint: dir.clone(),
        images: files.len(),
        sampler: sampler.sampler.name(),
        steps: sampler.steps,
        guidance: sampler.guidance,
        width,
        height,
        seed: args.sampling.seed,
        seconds: start.elapsed().as_secs_f64(),
        files,
        sheet,
        loras: merged,
    };
    if args.json {
        return super::print_json(&report);
    }
    println!(
        "{} images {}x{} ({} {} steps, guidance {}) in {:.1} s -> {}",
        report.images,
        width,
        height,
        report.sampler,
        report.steps,
        report.guidance,
        report.seconds,
        args.out.display()
    );
    Ok(())
}

/// A diffusers folder, or a single file with `--config DIR` or on its own (its family's preset).
fn load(args: &SampleArgs, device: tch::Device) -> Result<StableDiffusion, difforge_model::ModelError> {
    let path = &args.sampling.checkpoint;
    if path.is_dir() {
        if args.text.config.is_some() || args.text.prediction.is_some() {
            let flag = if args.text.config.is_some() { "--config" } else { "--prediction" };
            return Err(ConfigError::new(flag, "(given)", "nothing: a diffusers folder has its own configs and scheduler").into());
        }
        return StableDiffusion::load(path, device);
    }
    match &args.text.config {
        Some(config) => StableDiffusion::load_single_file(path, config, device),
        None => {
            let prediction = args.text.prediction.as_deref().map(|p| if p == "v" { "v_prediction" } else { p });
            StableDiffusion::load_single_file_preset(path, prediction, device)
        }
    }
}

fn refuse_pixel_flags(args: &SampleArgs) -> Result<(), ConfigError> {
    let unsupported = [("--class", args.class.is_some()), ("--raw", args.sampling.raw), ("--out-dir", args.out_dir.is_some())];
    match unsupported.iter().find(|(_, given)| *given) {
        Some((flag, _)) => Err(ConfigError::new(*flag, "(given)", "nothing: a diffusers Stable Diffusion folder does not take it yet")),
        None => Ok(()),
    }
}

/// `--prompt`, or the non-blank lines of `--prompts FILE`.
fn prompts(text: &TextPromptArgs) -> Result<Vec<String>, ConfigError> {
    match (&text.prompt, &text.prompts) {
        (Some(p), _) => Ok(vec![p.clone()]),
        (None, Some(file)) => {
            let content = difforge_core::read_text_capped(file, MAX_PROMPT_FILE_BYTES).map_err(|why| ConfigError::new("--prompts", file.display(), why))?;
            let prompts: Vec<String> = content.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
            if prompts.is_empty() || prompts.len() > MAX_PROMPTS {
                let why = format!("a file with 1..={MAX_PROMPTS} non-blank lines (it has {})", prompts.len());
                return Err(ConfigError::new("--prompts", file.display(), why));
            }
            Ok(prompts)
        }
        (None, None) => Err(ConfigError::new("--prompt", "(missing)", "a prompt (or --prompts FILE): this checkpoint is a text-to-image model")),
    }
}

/// `WxH`, or the model's square default.
fn size(flag: Option<&str>, default: i64) -> Result<(i64, i64), ConfigError> {
    flag.map_or(Ok((default, default)), parse_size)
}

/// `--size WxH` in pixels.
pub(super) fn parse_size(s: &str) -> Result<(i64, i64), ConfigError> {
    let parsed = s.split_once(['x', 'X']).and_then(|(w, h)| Some((w.trim().parse::<i64>().ok()?, h.trim().parse::<i64>().ok()?)));
    parsed.ok_or_else(|| ConfigError::new("--size", s, "WxH in pixels, e.g. 512x768"))
}

/// The folder's scheduler settings with the command line's choices; diffusers' defaults of 50
/// steps and guidance 7.5 (5 for SDXL) where the command line says nothing.
fn sampler_config(args: &SamplerArgs, sd: &StableDiffusion) -> Result<SamplerConfig, ConfigError> {
    let mut s = SamplerConfig { steps: 50, guidance: if sd.generation == Generation::Xl { 5.0 } else { 7.5 }, ..sd.scheduling.sampler.clone() };
    if let Some(name) = &args.sampler {
        s.sampler = SamplerKind::parse(name).ok_or_else(|| ConfigError::new("--sampler", name, SamplerKind::expected()))?;
    }
    s.steps = args.steps.unwrap_or(s.steps);
    s.guidance = args.guidance.unwrap_or(s.guidance);
    s.eta = args.eta.unwrap_or(s.eta);
    s.guidance_rescale = args.guidance_rescale.unwrap_or(s.guidance_rescale);
    s.cuda_graphs |= args.cuda_graphs;
    if args.guidance_interval.is_some() {
        return Err(ConfigError::new("--guidance-interval", "(given)", "nothing: text-to-image guides at every step"));
    }
    s.validate(sd.scheduling.schedule.len()).map_err(|e| e.rename_key(|k| k.strip_prefix("sample.").map(flag_of)))?;
    Ok(s)
}

fn flag_of(key: &str) -> &'static str {
    match key {
        "steps" => "--steps",
        "guidance" => "--guidance",
        "eta" => "--eta",
        "guidance_rescale" => "--guidance-rescale",
        _ => "--sampler",
    }
}

/// `--out` itself for one image; numbered beside it (`out-0001.png`) for several.
fn output_path(out: &Path, index: usize, total: usize) -> PathBuf {
    if total == 1 {
        return out.to_path_buf();
    }
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
    out.with_file_name(format!("{stem}-{index:04}.png"))
}

/// What made an image, for its PNG text chunks.
struct Settings<'a> {
    prompt: &'a str,
    negative: &'a str,
    seed: u64,
    width: i64,
    height: i64,
    sampler: &'a SamplerConfig,
    clip_skip: usize,
    noise: &'a str,
    model: &'a Path,
    loras: &'a [LoraChoice],
}

impl Settings<'_> {
    fn chunks(&self) -> Vec<(&'static str, String)> {
        let s = self.sampler;
        let model = self.model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // The webui's layout, which it, ComfyUI and image sites read back; LoRAs as the webui's
        // `<lora:name:scale>` after the prompt.
        let tags: String = self.loras.iter().map(|l| format!(" <lora:{}:{}>", l.name(), l.scale)).collect();
        let parameters = format!(
            "{}{}\nNegative prompt: {}\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}, Clip skip: {}, Noise: {}",
            self.prompt,
            tags,
            self.negative,
            s.steps,
            s.sampler.name(),
            s.guidance,
            self.seed,
            self.width,
            self.height,
            model,
            self.clip_skip + 1,
            self.noise
        );
        let json = serde_json::json!({
            "prompt": self.prompt, "negative_prompt": self.negative, "seed": self.seed, "width": self.width, "height": self.height,
            "sampler": s.sampler.name(), "steps": s.steps, "guidance": s.guidance, "eta": s.eta, "clip_skip": self.clip_skip,
            "noise": self.noise, "model": self.model,
            "loras": self.loras.iter().map(|l| serde_json::json!({ "name": l.name(), "path": l.path, "scale": l.scale })).collect::<Vec<_>>(),
            "generator": concat!("difforge ", env!("CARGO_PKG_VERSION")),
        });
        vec![("parameters", parameters), ("difforge", json.to_string())]
    }
}

#[derive(Serialize)]
struct Report<'a> {
    checkpoint: PathBuf,
    images: usize,
    sampler: &'a str,
    steps: usize,
    guidance: f64,
    width: i64,
    height: i64,
    seed: u64,
    seconds: f64,
    files: Vec<PathBuf>,
    /// `--out`: every image on one sheet, when there are several (at most 64).
    sheet: Option<PathBuf>,
    loras: Vec<LoraReport>,
}

/// A `--lora FILE[:SCALE]` of a Stable Diffusion model.
struct LoraChoice {
    path: PathBuf,
    scale: f64,
}

impl LoraChoice {
    /// The name the webui gives a LoRA: its file name without extension.
    fn name(&self) -> String {
        self.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
    }
}

/// Each `--lora` as a file and a scale: a value naming an existing file is the file (scale
/// `--lora-scale`), else `FILE:SCALE`.
fn lora_choices(sampling: &SamplingArgs) -> Result<Vec<LoraChoice>, ConfigError> {
    let in_range = |s: f64| s.is_finite() && (-10.0..=10.0).contains(&s);
    if !in_range(sampling.lora_scale) {
        return Err(ConfigError::new("--lora-scale", sampling.lora_scale, "a number in -10..=10"));
    }
    let mut choices = Vec::with_capacity(sampling.lora.len());
    for value in &sampling.lora {
        let text = value.to_string_lossy();
        let (path, scale) = match text.rsplit_once(':') {
            Some((file, scale)) if !value.is_file() => {
                let scale = scale.trim().parse::<f64>().ok().filter(|s| in_range(*s));
                let scale = scale.ok_or_else(|| ConfigError::new("--lora", &text, "FILE or FILE:SCALE with SCALE a number in -10..=10"))?;
                (PathBuf::from(file), scale)
            }
            _ => (value.clone(), sampling.lora_scale),
        };
        if !path.is_file() {
            return Err(ConfigError::new("--lora", &text, "a LoRA .safetensors file that exists (FILE or FILE:SCALE)"));
        }
        choices.push(LoraChoice { path, scale });
    }
    Ok(choices)
}
