//! What a run on a Stable Diffusion base takes from the base where its config is silent: the
//! `[diffusion]` schedule and prediction of `scheduler/scheduler_config.json`, and the `[sample]`
//! settings diffusers samples the base with (its scheduler's sampler, spacing, offset and final
//! alpha, the pipeline's steps and guidance, torch's starting noise). So a config needs no
//! schedule copied by hand, and a run's previews, `difforge sample --checkpoint RUN` and
//! `difforge serve RUN` render what diffusers renders with the base and the run's exported LoRA.
//! `[diffusion]` keys given otherwise are refused when the family loads (the schedule is the
//! base's physics); `[sample]` keys given otherwise are kept, with a warning that says what
//! will then differ from diffusers.

use super::pipeline::is_diffusers_folder;
use super::published::scheduler_settings;
use super::single_file_base::settings_before_conversion;
use crate::error::ModelError;
use difforge_config::{GivenOverDefault, ModelConfig, ModelDefaults};
use difforge_core::ConfigError;
use difforge_diffusion::{DiffusionConfig, SamplerConfig};

/// The `[diffusion]` keys a base's scheduler decides.
const DIFFUSION_KEYS: [&str; 6] = ["schedule", "timesteps", "beta_start", "beta_end", "prediction", "zero_terminal_snr"];
/// The `[sample]` keys diffusers' pipeline takes from the base (the scheduler) or its defaults.
const SAMPLE_KEYS: [&str; 9] = ["sampler", "spacing", "steps_offset", "set_alpha_to_one", "clip_x0", "eta", "steps", "guidance", "noise"];
/// The `[sample]` keys whose other values change the image diffusers would make at the same
/// steps and guidance (`clip_x0` never applies to latents; steps and guidance are the user's).
const IMAGE_KEYS: [&str; 6] = ["sampler", "spacing", "steps_offset", "set_alpha_to_one", "eta", "noise"];

/// The base's defaults for a Stable Diffusion run on a diffusers folder or single file (read from
/// its cached conversion); None for other models, new models (`[model.new]`: no base yet) and
/// bases that are neither (the family's loading says what is wrong with those).
pub fn run_defaults(model: &ModelConfig) -> Result<Option<ModelDefaults>, ConfigError> {
    let ModelConfig::StableDiffusion(sd) = model else { return Ok(None) };
    if sd.new.is_some() {
        return Ok(None);
    }
    let unreadable = |e: ModelError| ConfigError::new("model.base", sd.base.display(), format!("a base whose scheduler config difforge reads ({e})"));
    let settings = if sd.base.is_file() {
        settings_before_conversion(sd).map_err(unreadable)?
    } else if is_diffusers_folder(&sd.base) {
        Some(scheduler_settings(&sd.base).map_err(unreadable)?)
    } else {
        None
    };
    let Some((diffusion, sample)) = settings else { return Ok(None) };
    let mut sections = toml::Table::new();
    sections.insert("diffusion".into(), diffusion_section(&diffusion)?.into());
    sections.insert("sample".into(), sample_section(&sample)?.into());
    let source = format!("the scheduler of the base {}", sd.base.display());
    Ok(Some(ModelDefaults { sections, check_given: warn_on_other_sampling, source }))
}

fn diffusion_section(d: &DiffusionConfig) -> Result<toml::Table, ConfigError> {
    let mut section = keys_of(d, &DIFFUSION_KEYS)?;
    // Left out of serialised configs when false; here it must be said either way.
    section.insert("zero_terminal_snr".into(), d.zero_terminal_snr.into());
    Ok(section)
}

fn sample_section(s: &SamplerConfig) -> Result<toml::Table, ConfigError> {
    keys_of(s, &SAMPLE_KEYS)
}

/// The named keys of a config section as TOML.
fn keys_of(section: &impl serde::Serialize, keys: &[&str]) -> Result<toml::Table, ConfigError> {
    let toml::Value::Table(mut all) =
        toml::Value::try_from(section).map_err(|e| ConfigError::problem("model.base", format!("its scheduler's settings as TOML: {e}")))?
    else {
        return Err(ConfigError::problem("model.base", "its scheduler's settings as a TOML table"));
    };
    all.retain(|k, _| keys.contains(&k));
    Ok(all)
}

/// Warns once for the `[sample]` keys a config sets otherwise than diffusers samples the base.
fn warn_on_other_sampling(differing: &[GivenOverDefault], source: &str) -> Result<(), ConfigError> {
    let other: Vec<String> = differing
        .iter()
        .filter(|d| d.key.strip_prefix("sample.").is_some_and(|k| IMAGE_KEYS.contains(&k)))
        .map(|d| format!("{} = {} ({})", d.key, d.given, d.default))
        .collect();
    if !other.is_empty() {
        tracing::warn!(
            "{} differ from {source}, in brackets: previews, `difforge sample` and `serve` of this run will not render what diffusers renders with the base's scheduler and the exported LoRA (leave them out to follow the base)",
            other.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use difforge_config::RunConfig;
    use difforge_diffusion::{Prediction, ScheduleKind, Spacing, StartNoise};
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../difforge-nn/tests/fixtures/sd").join(name)
    }

    fn config(base: &str, extra: &str) -> Result<RunConfig, ConfigError> {
        let text = format!(
            "[data]\nsource = \"folder\"\npath = \"x\"\nimage_size = 32\nchannels = 3\n[model]\nfamily = \"stable-diffusion\"\nbase = {:?}\n{extra}",
            fixture(base).display().to_string()
        );
        RunConfig::from_toml_with(&text, &[], "test", &run_defaults)
    }

    #[test]
    fn a_config_without_diffusion_or_sample_takes_the_bases_scheduler() {
        let cfg = config("tiny-sd15", "").unwrap();
        let d = &cfg.diffusion;
        // tools/make_sd_fixtures.py: SD's DDIM, scaled_linear 0.00085..0.012, epsilon.
        assert_eq!((d.schedule, d.timesteps, d.beta_start, d.beta_end, d.prediction), (ScheduleKind::ScaledLinear, 1000, 0.00085, 0.012, Prediction::Epsilon));
        let s = &cfg.sample;
        assert_eq!((s.sampler.name(), s.spacing, s.steps_offset, s.set_alpha_to_one, s.clip_x0), ("ddim", Spacing::Leading, 1, false, false));
        assert_eq!((s.steps, s.guidance, s.noise), (50, 7.5, StartNoise::Torch));
        // The training settings of [diffusion] keep difforge's defaults.
        assert_eq!(d.class_dropout, DiffusionConfig::default().class_dropout);
        assert_eq!(config("tiny-sdxl", "").unwrap().sample.guidance, 5.0);
    }

    #[test]
    fn keys_a_config_gives_are_kept() {
        let cfg = config("tiny-sd15", "[diffusion]\nmin_snr_gamma = 5.0\n[sample]\nsteps = 4\nspacing = \"trailing\"\nnoise = \"portable\"\n").unwrap();
        assert_eq!((cfg.sample.steps, cfg.sample.spacing, cfg.sample.noise, cfg.sample.steps_offset), (4, Spacing::Trailing, StartNoise::Portable, 1));
        assert_eq!((cfg.diffusion.min_snr_gamma, cfg.diffusion.beta_end), (5.0, 0.012));
    }

    #[test]
    fn other_models_take_nothing() {
        let pixel = RunConfig::load(None, &[]).unwrap();
        assert!(run_defaults(&pixel.model).unwrap().is_none());
        // A base that is no folder: the family's loading names the problem.
        let missing = ModelConfig::from_table("family = \"stable-diffusion\"\nbase = \"/no/such/folder\"\n".parse().unwrap()).unwrap();
        assert!(run_defaults(&missing).unwrap().is_none());
    }
}
