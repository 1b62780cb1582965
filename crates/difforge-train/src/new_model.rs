//! Every stage of a text-to-image model made from scratch, from one config (`[model.new]`):
//! the VAE trained first (when the section names a VAE config), then a new Stable Diffusion
//! folder written around it (fresh UNet and text encoder, as `difforge sd init`), then the UNet
//! and text encoder trained on it. Each stage keeps its own folder under `RUN/stages/`, so a run
//! killed in any stage continues with `--resume RUN` where it stopped: a VAE with a checkpoint
//! resumes exactly, a finished stage is not redone.

use crate::error::TrainError;
use crate::run_folder::{RunFolder, Use};
use crate::trainer::{train, TrainOptions, TrainSummary};
use crate::vae::{train_vae, VaeSummary, VaeTrainOptions};
use difforge_config::{ModelConfig, NewSdModel, NewTokenizer, RunConfig, StableDiffusionConfig, VaeRunConfig};
use difforge_core::ConfigError;
use difforge_data::DataConfig;
use difforge_diffusion::Prediction;
use difforge_model::checkpoint;
use difforge_model::stable_diffusion::scratch::{self, ScratchSpec};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The folder of the stages inside the run folder, and what it holds.
pub const STAGES_DIR: &str = "stages";
/// The run's config as given (with `[model.new]`), which `--resume` reads.
const STAGES_CONFIG: &str = checkpoint::CONFIG_FILE;
const VAE_RUN: &str = "vae";
const BASE: &str = "base";

/// What the stages before the UNet did.
#[derive(Debug, Clone, Serialize)]
pub struct NewModelStages {
    /// The VAE the model is built on.
    pub vae: PathBuf,
    /// The VAE stage's summary when this invocation trained (or finished training) it.
    pub vae_training: Option<VaeSummary>,
    /// The new model before training (`model.base` of the UNet stage).
    pub base: PathBuf,
}

/// How a `[model.new]` run ended.
pub enum NewModelRun {
    /// Every stage ran (the UNet stage's summary, which may itself be interrupted).
    Trained(NewModelStages, Box<TrainSummary>),
    /// Stopped in the VAE stage (by a signal, or the VAE diverged): nothing after it ran.
    VaeStopped(VaeSummary),
}

/// Whether `run_dir` holds a `[model.new]` run (so `--resume` goes through the stages).
pub fn is_new_model_run(run_dir: &Path) -> bool {
    run_dir.join(STAGES_DIR).join(STAGES_CONFIG).is_file()
}

fn new_section(config: &RunConfig) -> Option<&NewSdModel> {
    match &config.model {
        ModelConfig::StableDiffusion(StableDiffusionConfig { new: Some(new), .. }) => Some(new),
        _ => None,
    }
}

/// Whether `config` describes a new model (and so must go through [`train_new_model`]).
pub fn makes_new_model(config: &RunConfig) -> bool {
    new_section(config).is_some()
}

/// The new model's networks: `[model.new]`'s sizes, the run's prediction and seed (captions
/// for a learned tokenizer are added when the model is written).
fn scratch_spec(config: &RunConfig, new: &NewSdModel) -> Result<ScratchSpec, TrainError> {
    let prediction_type = match config.diffusion.prediction {
        Prediction::Epsilon => "epsilon",
        Prediction::V => "v_prediction",
        Prediction::X0 => return Err(ConfigError::new("diffusion.prediction", "\"x0\"", "\"epsilon\" or \"v\" for a [model.new] model").into()),
    };
    Ok(ScratchSpec {
        sizes: new.clone(),
        captions: Vec::new(),
        prediction_type: prediction_type.into(),
        zero_terminal_snr: config.diffusion.zero_terminal_snr,
        seed: new.seed.unwrap_or(config.seed),
    })
}

/// Writes the new model at `base` around the VAE folder `vae`: a learned tokenizer is made from
/// every caption of `[data]` (a vocabulary tells nothing about the validation images beyond
/// their words).
fn write_base(config: &RunConfig, mut spec: ScratchSpec, vae: &Path, base: &Path) -> Result<(), TrainError> {
    if spec.sizes.tokenizer == NewTokenizer::Learned {
        spec.captions = difforge_data::source::load(&config.data)?.captions.into_iter().flatten().collect();
    }
    scratch::write_scratch_model(vae, &spec, i64::from(config.data.image_size), base)?;
    tracing::info!("wrote the new model {} (VAE from {})", base.display(), vae.display());
    Ok(())
}

/// Runs (or, with `opts.resume`, continues) every stage of the `[model.new]` run in
/// `opts.out_dir`. A fresh run takes `config`; a resumed one reads the config it saved.
pub fn train_new_model(config: Option<RunConfig>, mut opts: TrainOptions) -> Result<NewModelRun, TrainError> {
    let world = crate::world::World::from_env().map_err(|e| TrainError::Other(format!("this process's place in a multi-process run: {e}")))?;
    if world.is_distributed() {
        let expected =
            "a single process: train the new model's stages in one process (or its VAE alone), then the UNet on many from model.base = RUN/stages/base";
        return Err(ConfigError::new("model.new", "a multi-process run", expected).into());
    }
    let run_dir = opts.out_dir.clone();
    let stages_dir = run_dir.join(STAGES_DIR);
    let fresh = config.is_some() && !opts.resume;
    let config = match config.filter(|_| fresh) {
        Some(config) => config,
        None => RunConfig::load(Some(&stages_dir.join(STAGES_CONFIG)), &[])?,
    };
    let new = new_section(&config).ok_or_else(|| ConfigError::problem("model.new", "missing: this is not a run of a new model"))?.clone();
    let spec = scratch_spec(&config, &new)?;
    let base = stages_dir.join(BASE);
    if fresh {
        // Everything checked before the first stage spends time.
        new.check_vae()?;
        scratch::check_schedule(&spec, &base, &config.diffusion)?;
        start_fresh(&run_dir, &stages_dir, &config, opts.overwrite)?;
    }

    let (vae, vae_training) = if new.trains_vae() {
        let (folder, summary) = vae_stage(&new.vae, &stages_dir.join(VAE_RUN), &config.data, &opts)?;
        if let Some(s) = summary.as_ref().filter(|s| !s.completed()) {
            return Ok(NewModelRun::VaeStopped(s.clone()));
        }
        (folder, summary)
    } else {
        (new.vae.clone(), None)
    };
    if !base.join("model_index.json").is_file() {
        // Written whole or not at all, so a folder with its index is complete.
        write_base(&config, spec, &vae, &base)?;
    }
    let stages = NewModelStages { vae, vae_training, base: base.clone() };

    // The UNet stage is an ordinary run on the new base; it resumes when it has a checkpoint.
    let mut unet_config = config;
    if let ModelConfig::StableDiffusion(sd) = &mut unet_config.model {
        sd.base = base;
        sd.new = None;
    }
    let has_checkpoint = !checkpoint::list(&run_dir)?.is_empty();
    if opts.resume && !has_checkpoint {
        // Killed before the UNet's first checkpoint: that stage starts again, with the [train]
        // changes the resume asks for.
        if let Some(bad) = opts.resume_sets.iter().find(|s| !s.trim_start().starts_with("train.")) {
            return Err(ConfigError::new("--set", bad, "a [train] key: only those can change on --resume").into());
        }
        unet_config = RunConfig::from_toml(&unet_config.to_toml(), &opts.resume_sets, "the resumed run's config")?;
        (opts.resume, opts.overwrite) = (false, true);
        opts.resume_sets.clear();
    }
    let summary = train(unet_config, opts)?;
    Ok(NewModelRun::Trained(stages, Box::new(summary)))
}

/// A new run: the folder must hold no run (or `overwrite` clears it, stages too); the config
/// is kept for `--resume`.
fn start_fresh(run_dir: &Path, stages_dir: &Path, config: &RunConfig, overwrite: bool) -> Result<(), TrainError> {
    let how = if overwrite { Use::Overwrite } else { Use::New };
    drop(RunFolder::open(run_dir, how)?);
    if stages_dir.exists() {
        if !overwrite {
            let expected = "a folder without a run, but it holds the stages of one: continue it with --resume, or replace it with --overwrite";
            return Err(ConfigError::new("--out", run_dir.display(), expected).into());
        }
        std::fs::remove_dir_all(stages_dir).map_err(|e| TrainError::io(stages_dir, e))?;
    }
    std::fs::create_dir_all(stages_dir).map_err(|e| TrainError::io(stages_dir, e))?;
    let path = stages_dir.join(STAGES_CONFIG);
    difforge_core::write_atomic(&path, config.to_toml().as_bytes()).map_err(|e| TrainError::io(&path, e))
}

/// Trains the VAE of `vae_config` into `vae_run` (or continues it), unless it is already done;
/// returns its exported `vae/` folder and, when it trained here, its summary.
fn vae_stage(vae_config: &Path, vae_run: &Path, run_data: &DataConfig, opts: &TrainOptions) -> Result<(PathBuf, Option<VaeSummary>), TrainError> {
    let exported = vae_run.join(VAE_RUN);
    if crate::vae::completed_run(vae_run) {
        tracing::info!("the VAE stage is done: {}", exported.display());
        return Ok((exported, None));
    }
    let resume = !checkpoint::list(vae_run)?.is_empty();
    let config = if resume { VaeRunConfig::load(&vae_run.join(checkpoint::CONFIG_FILE), &[])? } else { VaeRunConfig::load(vae_config, &[])? };
    tracing::info!("{} the VAE stage: {}", if resume { "continuing" } else { "starting" }, vae_run.display());
    // The VAE stage reads its own config, which `--set data.…` on the run does not reach.
    if config.data.path != run_data.path {
        let shown = |p: &Option<PathBuf>| p.as_ref().map_or_else(|| "(none)".to_string(), |p| p.display().to_string());
        tracing::warn!(
            "the VAE trains on data.path = {} (its config, {}), the UNet on {}; to train both on the same images, set data.path in that config too",
            shown(&config.data.path),
            vae_config.display(),
            shown(&run_data.path)
        );
    }
    let vae_opts = VaeTrainOptions { out_dir: vae_run.to_path_buf(), resume, overwrite: !resume, stop: opts.stop.clone() };
    let summary = train_vae(config, vae_opts)?;
    Ok((exported, Some(summary)))
}
