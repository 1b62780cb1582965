//! `difforge vae train`: trains an AutoencoderKL (Stable Diffusion's VAE architecture, diffusers'
//! tensor names) from scratch, the first stage of a text-to-image model of one's own.
//!
//! It keeps the diffusion trainer's guarantees: the batch of step s comes from its stream
//! position and the posterior sample's noise from (seed, s), so a run gives the same weights
//! every time and `--resume` continues exactly; validation (reconstruction loss, PSNR, SSIM of
//! the posterior mean on held-out images) runs every `train.val_every` steps, keeps the best
//! weights and drives early stopping; non-finite steps are skipped. At the end the best (or last)
//! weights are exported as a diffusers `vae/` folder with the scaling factor measured on the
//! training latents, and the summary reports the latents' statistics (overall and per channel)
//! and FD-EffNet of the validation reconstructions against the validation images.
//!
//! Optional loss terms (both off by default, when a run is exactly what it was without them): a
//! perceptual distance on a frozen EfficientNet-Lite0 (`vae.perceptual_weight`) and a patch
//! discriminator from `vae.discriminator_start` on (`vae.discriminator_weight`), whose weights
//! and optimiser state are checkpointed with the VAE's, so that `--resume` stays exact.

pub mod discriminator;
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
use discriminator::{discriminator_hinge, PatchDiscriminator};
use export::LatentStats;
use objective::{ExtraTerms, MetricSums, Perceptual, ReconstructionMetrics};
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
/// The discriminator's weights and optimiser state in a checkpoint folder (with
/// `vae.discriminator_weight` > 0 only).
pub const DISCRIMINATOR_FILE: &str = "discriminator.safetensors";
pub const DISCRIMINATOR_OPTIMIZER_FILE: &str = "discriminator-optimizer.safetensors";
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
    /// Frechet distance of EfficientNet-Lite0 features (at 224 x 224, as `difforge eval`) of the
    /// validation reconstructions (posterior means) to those of the validation images; absent
    /// without validation images or without the weights.
    pub fd_effnet: Option<f64>,
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
    // The perceptual term's weights must be there before anything is written.
    if cfg.vae.perceptual_weight > 0.0 {
        objective::perceptual_weights(&cfg.vae)?;
    }
    let folder = RunFolder::open(&opts.out_dir, how)?;
    let run_dir = folder.path().to_path_buf();
    let device = device::prepare(&DeviceSettings::of_run(&cfg.train))?;
    let resume_from = if opts.resume { resume_point(&run_dir, &cfg)? } else { None };
    let config_path = run_dir.join(CONFIG_FILE);
    difforge_core::write_atomic(&config_path, cfg.to_toml().as_bytes()).map_err(|e| TrainError::io(&config_path, e))?;
    let data = load_data(&cfg)?;

    // Initialised on the CPU, then moved: the CPU generator draws the weights, so the seed alone
    // decides them whatever the device (the CUDA generator would draw others).
    tch::manual_seed((derive_seed(cfg.seed, Stream::Init, 0) >> 1) as i64);
    let mut vs = VarStore::new(Device::Cpu);
    let net = export::network_config(&cfg, 1.0);
    let vae = AutoencoderKl::new(&vs.root(), &net)?;
    difforge_model::device::move_var_store(&mut vs, device)?;
    let mut state = VaeState::default();
    if let Some((dir, st)) = &resume_from {
        difforge_nn::weights::load(&mut vs, &dir.join(VAE_FILE))?;
        state = st.clone();
        tracing::info!("resuming from {} (step {})", dir.display(), st.step);
    }
    let t = &cfg.train;
    let adamw = AdamWConfig { beta1: t.adam_beta1, beta2: t.adam_beta2, eps: t.adam_eps, weight_decay: t.weight_decay };
    let mut opt = AdamW::new(sorted_variables(&vs), adamw)?;
    if let Some((dir, st)) = &resume_from {
        let named = checkpoint::read_tensors(dir, OPTIMIZER_FILE, device)?;
        opt.load_state(&named, st.optimizer_steps).map_err(|e| difforge_model::ModelError::checkpoint(dir.join(OPTIMIZER_FILE), e))?;
    }
    let perceptual = if cfg.vae.perceptual_weight > 0.0 { Some(Perceptual::load(&cfg.vae, device)?) } else { None };
    let disc = if cfg.vae.discriminator_weight > 0.0 { Some(Discriminator::new(&cfg, device, adamw, resume_from.as_ref())?) } else { None };
    let mut opts_all = Optimisers { vae: opt, disc };
    let started = Instant::now();
    let first_step = state.step;
    let stopped_because = {
        let mut run =
            Run { cfg: &cfg, run_dir: &run_dir, vae: &vae, vs: &vs, perceptual: perceptual.as_ref(), device, logs: Logs::open(&run_dir, state.step)? };
        run.train(&mut opts_all, &mut state, &data, &opts.stop)?
    };
    let trained_images = (state.step - first_step) * t.batch_size as u64;
    let images_per_s = trained_images as f64 / started.elapsed().as_secs_f64().max(1e-9);
    let finished = Finished { state, stopped_because, images_per_s };
    finish(&cfg, &run_dir, &vae, &mut vs, &data, finished)
}

/// The patch discriminator with its variables and optimiser.
struct Discriminator {
    net: PatchDiscriminator,
    vs: VarStore,
    opt: AdamW,
}

impl Discriminator {
    /// A new discriminator (its own seed, after the VAE's, so the VAE's initialisation does not
    /// change), or the one of the checkpoint resumed from.
    fn new(cfg: &VaeRunConfig, device: Device, adamw: AdamWConfig, resume_from: Option<&(PathBuf, VaeState)>) -> Result<Discriminator, TrainError> {
        tch::manual_seed((derive_seed(cfg.seed, Stream::Init, 1) >> 1) as i64);
        let mut vs = VarStore::new(Device::Cpu);
        let net = PatchDiscriminator::new(&vs.root(), cfg.data.channels as i64);
        difforge_model::device::move_var_store(&mut vs, device)?;
        if let Some((dir, _)) = resume_from {
            difforge_nn::weights::load(&mut vs, &dir.join(DISCRIMINATOR_FILE))?;
        }
        let mut opt = AdamW::new(sorted_variables(&vs), adamw)?;
        if let Some((dir, st)) = resume_from {
            let named = checkpoint::read_tensors(dir, DISCRIMINATOR_OPTIMIZER_FILE, device)?;
            opt.load_state(&named, st.discriminator_steps).map_err(|e| difforge_model::ModelError::checkpoint(dir.join(DISCRIMINATOR_OPTIMIZER_FILE), e))?;
        }
        Ok(Discriminator { net, vs, opt })
    }
}

/// The VAE's optimiser and the discriminator (with its own), when there is one.
struct Optimisers {
    vae: AdamW,
    disc: Option<Discriminator>,
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
    perceptual: Option<f64>,
    adversarial: Option<f64>,
    /// The discriminator's hinge loss, and whether its update was applied.
    discriminator: Option<(f64, bool)>,
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
    /// The unweighted perceptual distance (with `vae.perceptual_weight` > 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    perceptual: Option<f64>,
    /// The generator's unweighted hinge term (from `vae.discriminator_start` on).
    #[serde(skip_serializing_if = "Option::is_none")]
    adversarial: Option<f64>,
    /// The discriminator's hinge loss (from `vae.discriminator_start` on).
    #[serde(skip_serializing_if = "Option::is_none")]
    discriminator: Option<f64>,
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
    perceptual: Option<&'a Perceptual>,
    device: Device,
    logs: Logs,
}

impl Run<'_> {
    /// Steps until `train.steps`, early stopping or a stop request; returns why it stopped.
    fn train(&mut self, opt: &mut Optimisers, state: &mut VaeState, data: &VaeData, stop: &AtomicBool) -> Result<String, TrainError> {
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
            if let Some((_, true)) = done.discriminator {
                state.discriminator_steps += 1;
            }
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
                    perceptual: done.perceptual,
                    adversarial: done.adversarial,
                    discriminator: done.discriminator.map(|(l, _)| l),
                };
                Logs::write(&mut self.logs.metrics, &record)?;
                let mut extra = String::new();
                if let Some(p) = done.perceptual {
                    extra += &format!(", perceptual {p:.4}");
                }
                if let (Some(g), Some((d, _))) = (done.adversarial, done.discriminator) {
                    extra += &format!(", generator {g:.4}, discriminator {d:.4}");
                }
                tracing::info!("step {} loss {:.5} (reconstruction {:.5}, kl {:.3}{extra}) lr {lr:.2e}", state.step, done.loss, done.reconstruction, done.kl);
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

    /// One optimiser step (and, from `vae.discriminator_start` on, one of the discriminator on
    /// the same reconstructions).
    fn step(&self, opts: &mut Optimisers, loader: &mut Loader, step: u64, lr: f64) -> Result<StepDone, TrainError> {
        let t = &self.cfg.train;
        let v = &self.cfg.vae;
        let adversarial_on = step >= v.discriminator_start;
        let disc = opts.disc.as_ref().filter(|_| adversarial_on).map(|d| &d.net);
        let opt = &mut opts.vae;
        opt.zero_grad();
        let (mut reconstruction, mut kl) = (0.0, 0.0);
        let (mut perceptual, mut adversarial) = (None::<f64>, None::<f64>);
        let mut fakes = Vec::new();
        let scale = 1.0 / t.grad_accum as f64;
        for micro in 0..t.grad_accum as u64 {
            let draw = step * t.grad_accum as u64 + micro;
            let batch = loader.train_batch(draw, t.batch_size);
            let x = pixels(&batch, self.device);
            let f = v.downscale() as i64;
            let shape = [batch.size as i64, v.latent_channels, batch.height as i64 / f, batch.width as i64 / f];
            let noise = gaussian(self.cfg.seed, Stream::Noise, draw, shape.iter().product::<i64>() as usize);
            let noise = Tensor::from_slice(&noise).view(shape).to_device(self.device);
            let extra = ExtraTerms { perceptual: self.perceptual, discriminator: disc };
            let terms = objective::training_loss(self.vae, v, &x, &noise, extra)?;
            (terms.total * scale).backward();
            reconstruction += terms.reconstruction * scale;
            kl += terms.kl * scale;
            if let Some(p) = terms.perceptual {
                perceptual = Some(perceptual.unwrap_or(0.0) + p * scale);
            }
            if let Some(g) = terms.adversarial {
                adversarial = Some(adversarial.unwrap_or(0.0) + g * scale);
            }
            if disc.is_some() {
                fakes.push((x, terms.output));
            }
        }
        let mut loss = reconstruction + v.kl_weight * kl;
        if let Some(p) = perceptual {
            loss += v.perceptual_weight * p;
        }
        if let Some(g) = adversarial {
            loss += v.discriminator_weight * g;
        }
        let grad_norm = opt.grad_norm();
        let applied = loss.is_finite() && grad_norm.is_finite();
        if applied {
            if t.grad_clip > 0.0 && grad_norm > t.grad_clip {
                opt.scale_grads(t.grad_clip / (grad_norm + 1e-6));
            }
            opt.step(lr)?;
        }
        // The discriminator learns on the reconstructions the VAE was just trained on (its
        // gradients from the generator's term above are discarded first).
        let mut discriminator = None;
        if let Some(d) = opts.disc.as_mut().filter(|_| adversarial_on) {
            d.opt.zero_grad();
            let mut d_loss = 0.0;
            for (real, fake) in &fakes {
                let l = discriminator_hinge(&d.net.forward(real), &d.net.forward(fake)) * scale;
                l.backward();
                d_loss += l.double_value(&[]);
            }
            let d_norm = d.opt.grad_norm();
            let d_applied = d_loss.is_finite() && d_norm.is_finite();
            if d_applied {
                if t.grad_clip > 0.0 && d_norm > t.grad_clip {
                    d.opt.scale_grads(t.grad_clip / (d_norm + 1e-6));
                }
                d.opt.step(lr)?;
            }
            discriminator = Some((d_loss, d_applied));
        }
        Ok(StepDone { loss, reconstruction, kl, grad_norm, applied, perceptual, adversarial, discriminator })
    }

    /// Validates, keeps the best checkpoint; returns true when early stopping should stop.
    fn validate(&mut self, opt: &Optimisers, state: &mut VaeState, val: &Batch) -> Result<bool, TrainError> {
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

    fn checkpoint(&self, opt: &Optimisers, state: &VaeState) -> Result<PathBuf, TrainError> {
        let dir = self.write_checkpoint(opt, state, &checkpoint::step_dir_name(state.step))?;
        checkpoint::prune(&self.run_dir.join("checkpoints"), self.cfg.train.keep_checkpoints)?;
        Ok(dir)
    }

    fn write_checkpoint(&self, opt: &Optimisers, state: &VaeState, name: &str) -> Result<PathBuf, TrainError> {
        let to_cpu = |v: Vec<(String, Tensor)>| -> Vec<(String, Tensor)> { v.into_iter().map(|(n, t)| (n, t.to_device(Device::Cpu))).collect() };
        let weights = to_cpu(sorted_variables(self.vs));
        let optimizer = to_cpu(opt.vae.state());
        let disc = opt.disc.as_ref().map(|d| (to_cpu(sorted_variables(&d.vs)), to_cpu(d.opt.state())));
        let state_json = serde_json::to_vec_pretty(state).map_err(|e| TrainError::Other(e.to_string()))?;
        let mut files = vec![CheckpointFile::Tensors(VAE_FILE, &weights), CheckpointFile::Tensors(OPTIMIZER_FILE, &optimizer)];
        if let Some((weights, optimizer)) = &disc {
            files.push(CheckpointFile::Tensors(DISCRIMINATOR_FILE, weights));
            files.push(CheckpointFile::Tensors(DISCRIMINATOR_OPTIMIZER_FILE, optimizer));
        }
        files.push(CheckpointFile::Bytes(STATE_FILE, state_json));
        files.push(CheckpointFile::Bytes(CONFIG_FILE, self.cfg.to_toml().into_bytes()));
        Ok(checkpoint::write_checkpoint_folder(&self.run_dir.join("checkpoints").join(name), &files, state.step)?)
    }
}

/// Reconstruction metrics of the posterior means of `val`, in batches of `train.batch_size`.
fn measure(cfg: &VaeRunConfig, vae: &AutoencoderKl, val: &Batch) -> Result<ReconstructionMetrics, TrainError> {
    let x = pixels(val, vae.device());
    let batch = cfg.train.batch_size.max(1) as i64;
    let out = decoded_means(vae, &x, cfg.train.batch_size)?;
    let mut sums = MetricSums::default();
    // Added batch by batch, as the sums were always formed.
    for (out, chunk) in out.split(batch, 0).iter().zip(x.split(batch, 0).iter()) {
        sums.add(cfg.vae.reconstruction_loss, out, chunk);
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
    let fd_effnet = data.val.as_ref().and_then(|val| fd_effnet(cfg, vae, val));
    tracing::info!(
        "latents: mean {:.4}, std {:.4} (per channel: means {}, stds {}) -> scaling factor {scaling_factor:.5}{}",
        latents.mean,
        latents.std,
        list(&latents.channel_mean),
        list(&latents.channel_std),
        fd_effnet.map_or(String::new(), |fd| format!("; FD-EffNet of the validation reconstructions {fd:.4}")),
    );
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
        fd_effnet,
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

fn list(values: &[f64]) -> String {
    let parts: Vec<String> = values.iter().map(|v| format!("{v:.3}")).collect();
    format!("[{}]", parts.join(", "))
}

/// FD-EffNet of the reconstructions (posterior means, clamped to [-1, 1]) of `val` against
/// `val`, with difforge-eval's feature network and Frechet distance (as `difforge eval`); None,
/// with a warning, when it cannot be computed (no weights, fewer than 2 images).
fn fd_effnet(cfg: &VaeRunConfig, vae: &AutoencoderKl, val: &Batch) -> Option<f64> {
    let compute = || -> Result<f64, String> {
        let path = objective::perceptual_weights(&cfg.vae).map_err(|e| e.to_string())?;
        let net = difforge_eval::features::FeatureNet::efficientnet(Some(&path), vae.device()).map_err(|e| e.to_string())?;
        let x = pixels(val, vae.device());
        let recon = reconstruct(vae, &x, cfg.train.batch_size).map_err(|e| e.to_string())?;
        let batch = cfg.train.batch_size.max(1);
        let real = net.extract(&x, batch, |_| {}).map_err(|e| e.to_string())?;
        let fake = net.extract(&recon, batch, |_| {}).map_err(|e| e.to_string())?;
        let fit = |f: &Tensor| difforge_eval::metrics::Gaussian::fit(f).map_err(|e| e.to_string());
        difforge_eval::metrics::frechet_distance(&fit(&fake)?, &fit(&real)?).map_err(|e| e.to_string())
    };
    compute().map_err(|e| tracing::warn!("FD-EffNet of the validation reconstructions not computed: {e}")).ok()
}

/// Writes the reconstructions (posterior means, decoded by the exported `vae/` folder) of the
/// first `count` validation images of the finished VAE run in `run_dir` (its config's split) to
/// `out` as `recon-NNNNN.png`, with the original's caption beside each as `recon-NNNNN.txt`:
/// what `difforge data judge` reads (tools/judge_vae_reconstructions.sh). Returns how many.
pub fn write_validation_reconstructions(run_dir: &Path, out: &Path, count: usize) -> Result<usize, TrainError> {
    let mut cfg = VaeRunConfig::load(&run_dir.join(CONFIG_FILE), &[])?;
    cfg.train.val_images = count;
    cfg.train.val_every = cfg.train.val_every.max(1);
    let data = load_data(&cfg)?;
    let Some(val) = data.val else {
        return Err(ConfigError::new("data.val_fraction", cfg.data.val_fraction, "a fraction that leaves validation images").into());
    };
    let vae = AutoencoderKl::load(&run_dir.join(EXPORT_DIR), Device::Cpu)?;
    let x = pixels(&val, Device::Cpu);
    let recon = reconstruct(&vae, &x, cfg.train.batch_size)?;
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let paths = difforge_model::images::save_each(&recon, out, "recon-").map_err(|e| TrainError::io(out, e))?;
    for (path, caption) in paths.iter().zip(&val.captions) {
        if let Some(caption) = caption {
            let txt = path.with_extension("txt");
            std::fs::write(&txt, caption).map_err(|e| TrainError::io(&txt, e))?;
        }
    }
    Ok(paths.len())
}

/// The decoded posterior means of `x`, clamped to [-1, 1], `batch` images at a time.
fn reconstruct(vae: &AutoencoderKl, x: &Tensor, batch: usize) -> Result<Tensor, TrainError> {
    Ok(decoded_means(vae, x, batch)?.clamp(-1.0, 1.0))
}

/// The decoded posterior means of `x` (not clamped), `batch` images at a time.
fn decoded_means(vae: &AutoencoderKl, x: &Tensor, batch: usize) -> Result<Tensor, TrainError> {
    let _guard = tch::no_grad_guard();
    let mut parts = Vec::new();
    for chunk in x.split(batch.max(1) as i64, 0) {
        parts.push(vae.decode(&vae.encode(&chunk)?.mean)?);
    }
    Ok(Tensor::cat(&parts, 0))
}
