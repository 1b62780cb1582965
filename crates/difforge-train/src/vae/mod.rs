//! `difforge vae train`: trains an AutoencoderKL (Stable Diffusion's VAE architecture, diffusers'
//! tensor names) from scratch, the first stage of a text-to-image model of one's own.
//!
//! It keeps the diffusion trainer's guarantees: the batch of step s comes from its stream
//! position and the posterior sample's noise from (seed, s), so a run gives the same weights
//! every time and `--resume` continues exactly; validation (reconstruction loss, PSNR, SSIM of
//! the posterior mean on held-out images) runs every `train.val_every` steps, keeps the best
//! weights and drives early stopping; non-finite steps are skipped. At the end the best (or last)
//! weights are exported as a diffusers `vae/` folder with the scaling factor measured on the
//! training latents.

pub mod export;
pub mod objective;
mod state;

use crate::error::TrainError;
use crate::lr::learning_rate;
use crate::metrics::{truncate_after_step, JsonLines};
use crate::run_folder::{RunFolder, Use};
use difforge_config::VaeRunConfig;
use difforge_core::{derive_seed, ConfigError, Stream};
use difforge_data::{source, Batch, ImageSet, Loader, Split};
use difforge_diffusion::noise::gaussian;
use difforge_model::checkpoint::{self, CheckpointFile, BEST_DIR, CONFIG_FILE, OPTIMIZER_FILE, STATE_FILE};
use difforge_model::device::{self, DeviceSettings};
use difforge_model::model::sorted_variables;
use difforge_nn::sd::autoencoder_kl::AutoencoderKl;
use difforge_nn::{AdamW, AdamWConfig};
use export::LatentStats;
use objective::{MetricSums, ReconstructionMetrics};
use serde::Serialize;
use state::{VaeBest, VaeState};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tch::nn::VarStore;
use tch::{Device, Tensor};

/// The VAE weights in a checkpoint folder.
pub const VAE_FILE: &str = "vae.safetensors";
/// The exported diffusers folder inside the run folder.
pub const EXPORT_DIR: &str = "vae";
/// Images shown in the reconstruction grid.
const GRID_IMAGES: usize = 8;
/// Training images whose latents set the scaling factor.
const STATS_IMAGES: usize = 1024;

#[derive(Default)]
pub struct VaeTrainOptions {
    pub out_dir: PathBuf,
    pub resume: bool,
    pub overwrite: bool,
    /// Set by SIGINT/SIGTERM: finish the step, checkpoint, export, stop.
    pub stop: Arc<AtomicBool>,
}

/// Why a VAE run stops when it has not finished: the beginnings of `stopped_because`.
/// The summary a VAE run writes when it stops.
const SUMMARY_FILE: &str = "summary.json";
const STOPPED_BY_SIGNAL: &str = "stopped by signal";
const DIVERGED: &str = "diverged";

#[derive(Debug, Clone, Serialize)]
pub struct VaeSummary {
    pub run_dir: PathBuf,
    pub final_step: u64,
    pub steps_planned: u64,
    pub stopped_because: String,
    pub final_loss: f64,
    pub skipped_steps: u64,
    /// The validation of the exported weights (absent without validation images).
    pub validation: Option<ReconstructionMetrics>,
    pub best: Option<VaeBest>,
    pub latents: LatentStats,
    pub scaling_factor: f64,
    /// Latents are this many times smaller than images per side.
    pub downscale: u32,
    pub exported: PathBuf,
    pub reconstructions: Option<PathBuf>,
    pub parameters: i64,
    pub train_images: usize,
    pub val_images: usize,
    pub wall_time_s: f64,
    pub images_per_s: f64,
    pub device: String,
    pub threads: usize,
}

impl VaeSummary {
    /// Whether the run finished (its steps, or early stopping), rather than being stopped or
    /// diverging.
    pub fn completed(&self) -> bool {
        stop_reason_completes(&self.stopped_because)
    }
}

fn stop_reason_completes(reason: &str) -> bool {
    !reason.starts_with(STOPPED_BY_SIGNAL) && !reason.starts_with(DIVERGED)
}

/// Whether `run_dir` holds a finished VAE run (its summary says so).
pub fn completed_run(run_dir: &Path) -> bool {
    let Ok(text) = std::fs::read(run_dir.join(SUMMARY_FILE)) else { return false };
    let summary: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
    summary["stopped_because"].as_str().is_some_and(stop_reason_completes)
}

/// The run's images: the training loader and the validation images (centre crops, fixed).
struct VaeData {
    set: Arc<ImageSet>,
    train_idx: Vec<usize>,
    train: Loader,
    val: Option<Batch>,
}

/// Trains the VAE of `cfg` into `opts.out_dir`.
pub fn train_vae(cfg: VaeRunConfig, opts: VaeTrainOptions) -> Result<VaeSummary, TrainError> {
    let how = match (opts.resume, opts.overwrite) {
        (true, true) => return Err(ConfigError::problem("--resume", "cannot be combined with --overwrite").into()),
        (true, false) => Use::Resume,
        (false, true) => Use::Overwrite,
        (false, false) => Use::New,
    };
    let folder = RunFolder::open(&opts.out_dir, how)?;
    let run_dir = folder.path().to_path_buf();
    let device = device::prepare(&DeviceSettings::of_run(&cfg.train))?;
    let resume_from = if opts.resume { resume_point(&run_dir, &cfg)? } else { None };
    let config_path = run_dir.join(CONFIG_FILE);
    difforge_core::write_atomic(&config_path, cfg.to_toml().as_bytes()).map_err(|e| TrainError::io(&config_path, e))?;
    let data = load_data(&cfg)?;

    tch::manual_seed((derive_seed(cfg.seed, Stream::Init, 0) >> 1) as i64);
    let mut vs = VarStore::new(device);
    let net = export::network_config(&cfg, 1.0);
    let vae = AutoencoderKl::new(&vs.root(), &net)?;
    let mut state = VaeState::default();
    if let Some((dir, st)) = &resume_from {
        difforge_nn::weights::load(&mut vs, &dir.join(VAE_FILE))?;
        state = st.clone();
        tracing::info!("resuming from {} (step {})", dir.display(), st.step);
    }
    let t = &cfg.train;
    let mut opt = AdamW::new(sorted_variables(&vs), AdamWConfig { beta1: t.adam_beta1, beta2: t.adam_beta2, eps: t.adam_eps, weight_decay: t.weight_decay })?;
    if let Some((dir, st)) = &resume_from {
        let named = checkpoint::read_tensors(dir, OPTIMIZER_FILE, device)?;
        opt.load_state(&named, st.optimizer_steps).map_err(|e| difforge_model::ModelError::checkpoint(dir.join(OPTIMIZER_FILE), e))?;
    }
    let started = Instant::now();
    let first_step = state.step;
    let stopped_because = {
        let mut run = Run { cfg: &cfg, run_dir: &run_dir, vae: &vae, vs: &vs, device, logs: Logs::open(&run_dir, state.step)? };
        run.train(&mut opt, &mut state, &data, &opts.stop)?
    };
    let trained_images = (state.step - first_step) * t.batch_size as u64;
    let images_per_s = trained_images as f64 / started.elapsed().as_secs_f64().max(1e-9);
    let finished = Finished { state, stopped_because, images_per_s };
    finish(&cfg, &run_dir, &vae, &mut vs, &data, finished)
}

/// The newest complete checkpoint of the run in `run_dir`, after checking that `cfg` only
/// changes what a resumed run may change.
fn resume_point(run_dir: &Path, cfg: &VaeRunConfig) -> Result<Option<(PathBuf, VaeState)>, TrainError> {
    let saved_path = run_dir.join(CONFIG_FILE);
    if let Ok(text) = std::fs::read_to_string(&saved_path) {
        let saved = VaeRunConfig::from_toml(&text, &[], &saved_path.display().to_string())?;
        for (section, same) in [("seed", saved.seed == cfg.seed), ("[data]", saved.data == cfg.data), ("[vae]", saved.vae == cfg.vae)] {
            if !same {
                return Err(ConfigError::new(
                    "--config",
                    section,
                    format!("the same {section} as the run being resumed ({}): only [train] may change on --resume", saved_path.display()),
                )
                .into());
            }
        }
    }
    for (_, dir) in checkpoint::list(run_dir)?.into_iter().rev() {
        match checkpoint::verify(&dir) {
            Ok(_) => return Ok(Some((dir.clone(), state::read(&dir)?))),
            Err(e) => tracing::warn!("skipping checkpoint {}: {e}", dir.display()),
        }
    }
    Err(ConfigError::new("--resume", run_dir.display(), "a VAE run folder with a complete checkpoint").into())
}

/// Loads the images and splits them (or reads `data.val_path` for validation).
fn load_data(cfg: &VaeRunConfig) -> Result<VaeData, TrainError> {
    let set = Arc::new(source::load(&cfg.data)?);
    if let Some(first) = set.skipped.first() {
        tracing::warn!("{} unreadable image file(s) skipped, e.g. {}: {}", set.skipped.len(), first.path.display(), first.reason);
    }
    let d = &cfg.data;
    let (train_idx, val_set, val_idx) = match &d.val_path {
        Some(path) => {
            let folder = difforge_data::DataConfig { source: difforge_data::SourceKind::Folder, path: Some(path.clone()), ..d.clone() };
            let val = Arc::new(source::load(&folder)?);
            let all: Vec<usize> = (0..val.len()).collect();
            ((0..set.len()).collect(), val, all)
        }
        None => {
            let split = Split::new(&set.ids, d.val_fraction, cfg.seed);
            (split.train, set.clone(), split.val)
        }
    };
    if train_idx.is_empty() {
        return Err(ConfigError::new("data.val_fraction", d.val_fraction, "a fraction that leaves training images").into());
    }
    let val_idx: Vec<usize> = val_idx.into_iter().take(cfg.train.val_images).collect();
    let val = (cfg.train.val_every > 0 && !val_idx.is_empty()).then(|| fixed_loader(cfg, &val_set, Vec::new()).fixed_batch(&val_idx));
    if cfg.train.val_every > 0 && val.is_none() {
        tracing::warn!("no validation images (data.val_fraction is 0): validation and early stopping are off");
    }
    let train = Loader::new(set.clone(), train_idx.clone(), d.image_size, d.crop, d.augment.clone(), cfg.seed);
    Ok(VaeData { set, train_idx, train, val })
}

fn fixed_loader(cfg: &VaeRunConfig, set: &Arc<ImageSet>, indices: Vec<usize>) -> Loader {
    Loader::new(set.clone(), indices, cfg.data.image_size, cfg.data.crop, Default::default(), cfg.seed)
}

/// A batch's pixels as a (B, C, H, W) tensor on `device`.
fn pixels(batch: &Batch, device: Device) -> Tensor {
    Tensor::from_slice(&batch.images).view(batch.shape()).to_device(device)
}

/// metrics.jsonl and validation.jsonl, with the records past the resumed step dropped.
struct Logs {
    metrics: JsonLines,
    validation: JsonLines,
}

impl Logs {
    fn open(run_dir: &Path, step: u64) -> Result<Logs, TrainError> {
        let open = |name: &str| -> Result<JsonLines, TrainError> {
            let path = run_dir.join(name);
            truncate_after_step(&path, step).map_err(|e| TrainError::io(&path, e))?;
            JsonLines::append(&path).map_err(|e| TrainError::io(&path, e))
        };
        Ok(Logs { metrics: open("metrics.jsonl")?, validation: open("validation.jsonl")? })
    }

    fn write(log: &mut JsonLines, record: &impl Serialize) -> Result<(), TrainError> {
        log.write(record).map_err(|e| TrainError::io(log.path(), e))
    }
}

/// What one optimiser step did.
struct StepDone {
    loss: f64,
    reconstruction: f64,
    kl: f64,
    grad_norm: f64,
    /// False when the step was skipped (non-finite loss or gradient).
    applied: bool,
}

#[derive(Serialize)]
struct StepRecord {
    step: u64,
    loss: f64,
    reconstruction: f64,
    kl: f64,
    lr: f64,
    grad_norm: f64,
    elapsed_s: f64,
}

#[derive(Serialize)]
struct ValidationRecord {
    step: u64,
    #[serde(flatten)]
    metrics: ReconstructionMetrics,
    improved: bool,
}

/// What the loop works with.
struct Run<'a> {
    cfg: &'a VaeRunConfig,
    run_dir: &'a Path,
    vae: &'a AutoencoderKl,
    vs: &'a VarStore,
    device: Device,
    logs: Logs,
}

impl Run<'_> {
    /// Steps until `train.steps`, early stopping or a stop request; returns why it stopped.
    fn train(&mut self, opt: &mut AdamW, state: &mut VaeState, data: &VaeData, stop: &AtomicBool) -> Result<String, TrainError> {
        let t = &self.cfg.train;
        let mut loader = data.train.clone();
        let mut bad_in_a_row = 0u32;
        let clock = Instant::now();
        let elapsed_before = state.elapsed_s;
        while state.step < t.steps {
            let step = state.step;
            let lr = learning_rate(t, step);
            let done = self.step(opt, &mut loader, step, lr)?;
            state.step += 1;
            state.elapsed_s = elapsed_before + clock.elapsed().as_secs_f64();
            if done.applied {
                state.optimizer_steps += 1;
                state.last_loss = done.loss;
                bad_in_a_row = 0;
            } else {
                state.skipped_steps += 1;
                bad_in_a_row += 1;
                tracing::warn!("step {step}: non-finite loss or gradient, update skipped");
                if bad_in_a_row >= t.max_bad_steps {
                    self.checkpoint(opt, state)?;
                    return Ok(format!("{DIVERGED}: {bad_in_a_row} non-finite steps in a row"));
                }
            }
            state.images_seen += t.batch_size as u64;
            if state.step.is_multiple_of(t.log_every) || state.step == t.steps {
                let record = StepRecord {
                    step: state.step,
                    loss: done.loss,
                    reconstruction: done.reconstruction,
                    kl: done.kl,
                    lr,
                    grad_norm: done.grad_norm,
                    elapsed_s: state.elapsed_s,
                };
                Logs::write(&mut self.logs.metrics, &record)?;
                tracing::info!("step {} loss {:.5} (reconstruction {:.5}, kl {:.3}) lr {lr:.2e}", state.step, done.loss, done.reconstruction, done.kl);
            }
            let mut early_stop = false;
            if let Some(val) = data.val.as_ref().filter(|_| t.val_every > 0 && state.step.is_multiple_of(t.val_every)) {
                early_stop = self.validate(opt, state, val)?;
            }
            if state.step.is_multiple_of(t.checkpoint_every.max(1)) || state.step == t.steps || early_stop || stop.load(Ordering::SeqCst) {
                self.checkpoint(opt, state)?;
            }
            if early_stop {
                return Ok(format!("early stopping: no improvement in {} validations", state.validations_without_improvement));
            }
            if stop.load(Ordering::SeqCst) {
                return Ok(STOPPED_BY_SIGNAL.into());
            }
        }
        Ok("reached train.steps".into())
    }

    /// One optimiser step.
    fn step(&self, opt: &mut AdamW, loader: &mut Loader, step: u64, lr: f64) -> Result<StepDone, TrainError> {
        let t = &self.cfg.train;
        opt.zero_grad();
        let (mut reconstruction, mut kl) = (0.0, 0.0);
        for micro in 0..t.grad_accum as u64 {
            let draw = step * t.grad_accum as u64 + micro;
            let batch = loader.train_batch(draw, t.batch_size);
            let x = pixels(&batch, self.device);
            let f = self.cfg.vae.downscale() as i64;
            let shape = [batch.size as i64, self.cfg.vae.latent_channels, batch.height as i64 / f, batch.width as i64 / f];
            let noise = gaussian(self.cfg.seed, Stream::Noise, draw, shape.iter().product::<i64>() as usize);
            let noise = Tensor::from_slice(&noise).view(shape).to_device(self.device);
            let terms = objective::training_loss(self.vae, &self.cfg.vae, &x, &noise)?;
            let scale = 1.0 / t.grad_accum as f64;
            (terms.total * scale).backward();
            reconstruction += terms.reconstruction * scale;
            kl += terms.kl * scale;
        }
        let loss = reconstruction + self.cfg.vae.kl_weight * kl;
        let grad_norm = opt.grad_norm();
        let applied = loss.is_finite() && grad_norm.is_finite();
        if applied {
            if t.grad_clip > 0.0 && grad_norm > t.grad_clip {
                opt.scale_grads(t.grad_clip / (grad_norm + 1e-6));
            }
            opt.step(lr)?;
        }
        Ok(StepDone { loss, reconstruction, kl, grad_norm, applied })
    }

    /// Validates, keeps the best checkpoint; returns true when early stopping should stop.
    fn validate(&mut self, opt: &AdamW, state: &mut VaeState, val: &Batch) -> Result<bool, TrainError> {
        let t = &self.cfg.train;
        let metrics = measure(self.cfg, self.vae, val)?;
        let improved = state.best.as_ref().is_none_or(|b| metrics.loss < b.val_loss - t.early_stop_min_delta);
        if improved {
            state.best = Some(VaeBest { step: state.step, val_loss: metrics.loss, psnr: metrics.psnr, ssim: metrics.ssim });
            state.validations_without_improvement = 0;
            self.write_checkpoint(opt, state, BEST_DIR)?;
        } else {
            state.validations_without_improvement += 1;
        }
        Logs::write(&mut self.logs.validation, &ValidationRecord { step: state.step, metrics, improved })?;
        tracing::info!(
            "validation at step {}: loss {:.5}, PSNR {:.2} dB, SSIM {:.4}{}",
            state.step,
            metrics.loss,
            metrics.psnr,
            metrics.ssim,
            if improved { " (best)" } else { "" }
        );
        let patience = t.early_stop_patience;
        Ok(patience > 0 && state.validations_without_improvement >= patience && state.step >= t.early_stop_min_steps)
    }

    fn checkpoint(&self, opt: &AdamW, state: &VaeState) -> Result<PathBuf, TrainError> {
        let dir = self.write_checkpoint(opt, state, &checkpoint::step_dir_name(state.step))?;
        checkpoint::prune(&self.run_dir.join("checkpoints"), self.cfg.train.keep_checkpoints)?;
        Ok(dir)
    }

    fn write_checkpoint(&self, opt: &AdamW, state: &VaeState, name: &str) -> Result<PathBuf, TrainError> {
        let to_cpu = |v: Vec<(String, Tensor)>| -> Vec<(String, Tensor)> { v.into_iter().map(|(n, t)| (n, t.to_device(Device::Cpu))).collect() };
        let weights = to_cpu(sorted_variables(self.vs));
        let optimizer = to_cpu(opt.state());
        let state_json = serde_json::to_vec_pretty(state).map_err(|e| TrainError::Other(e.to_string()))?;
        let files = [
            CheckpointFile::Tensors(VAE_FILE, &weights),
            CheckpointFile::Tensors(OPTIMIZER_FILE, &optimizer),
            CheckpointFile::Bytes(STATE_FILE, state_json),
            CheckpointFile::Bytes(CONFIG_FILE, self.cfg.to_toml().into_bytes()),
        ];
        Ok(checkpoint::write_checkpoint_folder(&self.run_dir.join("checkpoints").join(name), &files, state.step)?)
    }
}

/// Reconstruction metrics of the posterior means of `val`, in batches of `train.batch_size`.
fn measure(cfg: &VaeRunConfig, vae: &AutoencoderKl, val: &Batch) -> Result<ReconstructionMetrics, TrainError> {
    let _guard = tch::no_grad_guard();
    let x = pixels(val, vae.device());
    let mut sums = MetricSums::default();
    for chunk in x.split(cfg.train.batch_size as i64, 0) {
        let out = vae.decode(&vae.encode(&chunk)?.mean)?;
        sums.add(cfg.vae.reconstruction_loss, &out, &chunk);
    }
    Ok(sums.mean())
}

/// How the loop ended.
struct Finished {
    state: VaeState,
    stopped_because: String,
    images_per_s: f64,
}

/// Loads the best weights (when validation kept some), measures the latents, exports the
/// diffusers folder and the reconstructions, and writes the summary.
fn finish(cfg: &VaeRunConfig, run_dir: &Path, vae: &AutoencoderKl, vs: &mut VarStore, data: &VaeData, end: Finished) -> Result<VaeSummary, TrainError> {
    let Finished { state, stopped_because, images_per_s } = end;
    let best_dir = run_dir.join("checkpoints").join(BEST_DIR);
    if state.best.is_some() && checkpoint::verify(&best_dir).is_ok() {
        difforge_nn::weights::load(vs, &best_dir.join(VAE_FILE))?;
    }
    let device = vae.device();
    let stats_idx = &data.train_idx[..data.train_idx.len().min(STATS_IMAGES)];
    let x = pixels(&fixed_loader(cfg, &data.set, Vec::new()).fixed_batch(stats_idx), device);
    let latents = export::latent_stats(vae, x.split(cfg.train.batch_size as i64, 0).into_iter())?;
    let scaling_factor = latents.scaling_factor();
    let net = export::network_config(cfg, scaling_factor);
    let exported = export::write_diffusers_folder(&run_dir.join(EXPORT_DIR), &net, vs, cfg.data.image_size)?;
    let (validation, reconstructions) = match &data.val {
        Some(val) => {
            let grid = run_dir.join("reconstructions.png");
            let shown = pixels(val, device).narrow(0, 0, (val.size as i64).min(GRID_IMAGES as i64));
            export::write_reconstructions(vae, &shown, &grid, &run_dir.join(export::PARITY_FILE))?;
            (Some(measure(cfg, vae, val)?), Some(grid))
        }
        None => (None, None),
    };
    let summary = VaeSummary {
        run_dir: run_dir.to_path_buf(),
        final_step: state.step,
        steps_planned: cfg.train.steps,
        stopped_because,
        final_loss: state.last_loss,
        skipped_steps: state.skipped_steps,
        validation,
        best: state.best,
        latents,
        scaling_factor,
        downscale: cfg.vae.downscale(),
        exported,
        reconstructions,
        parameters: difforge_nn::weights::parameter_count(vs),
        train_images: data.train_idx.len(),
        val_images: data.val.as_ref().map_or(0, |v| v.size),
        wall_time_s: state.elapsed_s,
        images_per_s,
        device: device::describe(device),
        threads: device::resolve_threads(cfg.train.threads),
    };
    let path = run_dir.join(SUMMARY_FILE);
    let json = serde_json::to_vec_pretty(&summary).map_err(|e| TrainError::Other(e.to_string()))?;
    difforge_core::write_atomic(&path, &json).map_err(|e| TrainError::io(&path, e))?;
    Ok(summary)
}
