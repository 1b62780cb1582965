//! A published diffusers folder used as it is, through the same model as a trained run (what
//! `difforge serve` loads): the run config that describes it. Its `[diffusion]` is the folder's
//! scheduler, its `[sample]` the scheduler's sampler with diffusers' pipeline defaults (50 steps,
//! guidance 7.5, or 5 for SDXL, and diffusers' starting noise), its image size the UNet's
//! `sample_size` times the VAE's scale.

use super::scheduler::SchedulerConfig;
use crate::error::ModelError;
use difforge_config::RunConfig;
use difforge_diffusion::{DiffusionConfig, SamplerConfig, StartNoise};
use difforge_nn::sd::autoencoder_kl::AutoencoderKlConfig;
use difforge_nn::sd::load::read_config;
use difforge_nn::sd::unet_config::UNet2DConditionConfig;
use std::path::Path;

/// diffusers' StableDiffusionPipeline default.
const STEPS: usize = 50;
const GUIDANCE: f64 = 7.5;
/// diffusers' StableDiffusionXLPipeline default.
const GUIDANCE_XL: f64 = 5.0;

/// The folder's `[diffusion]` (its scheduler's betas and prediction) and `[sample]` (the
/// scheduler's sampler with diffusers' pipeline defaults, and diffusers' starting noise), from
/// `scheduler/scheduler_config.json`.
pub fn scheduler_settings(folder: &Path) -> Result<(DiffusionConfig, SamplerConfig), ModelError> {
    let scheduler_dir = folder.join("scheduler");
    let scheduler = SchedulerConfig::read(&scheduler_dir)?;
    settings_of(&scheduler, &scheduler_dir.join("scheduler_config.json"), folder.join("text_encoder_2").is_dir())
}

/// [`scheduler_settings`] of a scheduler config (read from `file`, for errors) of an SDXL model
/// (`xl`) or another.
pub fn settings_of(scheduler: &SchedulerConfig, file: &Path, xl: bool) -> Result<(DiffusionConfig, SamplerConfig), ModelError> {
    let scheduling = scheduler.scheduling(file)?;
    if let Some(note) = &scheduling.substitute {
        tracing::warn!("{note}");
    }
    let mut sample = scheduling.sampler;
    sample.steps = STEPS;
    sample.guidance = if xl { GUIDANCE_XL } else { GUIDANCE };
    sample.noise = StartNoise::Torch;
    Ok((scheduler.diffusion_config(file)?, sample))
}

/// The run config of `folder` (a diffusers Stable Diffusion folder), checked as any run's is.
pub fn run_config(folder: &Path) -> Result<RunConfig, ModelError> {
    let (diffusion, sample) = scheduler_settings(folder)?;
    let unet: UNet2DConditionConfig = read_config(&folder.join("unet"))?;
    let vae: AutoencoderKlConfig = read_config(&folder.join("vae"))?;
    let size = unet.sample_size.unwrap_or(64) * vae.downscale();

    let mut model = toml::Table::new();
    model.insert("family".into(), "stable-diffusion".into());
    model.insert("base".into(), folder.display().to_string().into());
    model.insert("image_size".into(), size.into());
    let mut cfg = RunConfig::load(None, &[])?;
    cfg.model = difforge_config::ModelConfig::from_table(model)?;
    cfg.data.image_size = u32::try_from(size).map_err(|_| ModelError::Other(format!("{}: image size {size} is out of range", folder.display())))?;
    cfg.data.channels = 3;
    cfg.diffusion = diffusion;
    cfg.sample = sample;
    cfg.resolve();
    cfg.validate()?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use difforge_diffusion::{Prediction, Spacing};
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../difforge-nn/tests/fixtures/sd").join(name)
    }

    #[test]
    fn a_published_folder_becomes_a_run_config_with_its_scheduler() {
        let cfg = run_config(&fixture("tiny-sd15")).unwrap();
        let s = &cfg.sample;
        // tools/make_sd_fixtures.py: SD's DDIM (leading spacing, offset 1, final alpha_bar of t = 0).
        assert_eq!((s.sampler.name(), s.spacing, s.steps_offset, s.set_alpha_to_one, s.steps), ("ddim", Spacing::Leading, 1, false, 50));
        assert_eq!((s.guidance, cfg.diffusion.prediction, cfg.diffusion.beta_end), (7.5, Prediction::Epsilon, 0.012));
        assert_eq!(s.noise, difforge_diffusion::StartNoise::Torch);
        assert!(matches!(&cfg.model, difforge_config::ModelConfig::StableDiffusion(sd) if sd.base == fixture("tiny-sd15")));
        let xl = run_config(&fixture("tiny-sdxl")).unwrap();
        assert_eq!(xl.sample.guidance, 5.0);
    }

    #[test]
    fn a_folder_without_a_scheduler_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = run_config(dir.path()).unwrap_err().to_string();
        assert!(err.contains("scheduler_config.json"), "{err}");
    }
}
