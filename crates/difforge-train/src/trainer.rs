//! The training loop. Every random draw of step s comes from (seed, s), the data of step s from
//! its stream position, and the whole state lives in checkpoints: so a run of N steps gives the
//! same weights every time on the same machine and thread count, and a resumed run continues
//! exactly where the interrupted one was. Non-finite steps are skipped and, when they persist,
//! rolled back; validation runs every `val_every` steps and drives early stopping.

use crate::checkpoint::{self, BestMetric, TrainState};
use crate::config::RunConfig;
use crate::device;
use crate::ema;
use crate::error::TrainError;
use crate::evaluator::{eval_metric, Evaluator};
use crate::generate::{class_grid_spec, generate, save_grid, GenerateSpec};
use crate::lr::learning_rate;
use crate::metrics::{truncate_after_step, JsonLines};
use crate::model::DiffusionModel;
use crate::optimizer::{AdamW, AdamWConfig};
use crate::progress::Progress;
use crate::validation::{ValidationLoss, Validator};
use difforge_core::{derive_seed, rng_for, Stream};
use difforge_data::check::{check_folder, check_set, CheckOptions};
use difforge_data::{source, Balance, Batch, ImageSet, Loader, SourceKind, Split};
use difforge_diffusion::noise::gaussian;
use rand::Rng;
use serde::Serialize;
use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Default)]
pub struct TrainOptions {
    pub out_dir: PathBuf,
    /// Continue from the newest good checkpoint in `out_dir`.
    pub resume: bool,
    /// Overrides allowed on resume (train.steps and other [train] keys).
    pub resume_sets: Vec<String>,
    /// Set by SIGINT/SIGTERM: finish the step, checkpoint, stop.
    pub stop: Arc<AtomicBool>,
    /// Runs the sample-quality evaluation every `train.eval_every` steps (None: not run).
    pub evaluator: Option<Box<dyn Evaluator>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    pub final_step: u64,
    pub steps_planned: u64,
    pub stopped_because: String,
    /// True when the run stopped because training diverged (too many non-finite steps).
    pub diverged: bool,
    pub final_loss: f64,
    pub mean_loss_last_100: f64,
    pub skipped_steps: u64,
    pub rollbacks: u32,
    pub loss_spikes: u64,
    pub final_validation: Option<ValidationSummary>,
    pub best: Option<BestMetric>,
    pub best_checkpoint: Option<PathBuf>,
    pub wall_time_s: f64,
    pub images_per_s: f64,
    pub device: String,
    pub threads: usize,
    pub parameters: i64,
    pub train_images: usize,
    pub val_images: usize,
    pub skipped_files: usize,
    pub checkpoint: Option<PathBuf>,
    /// The LoRA adapter file, for LoRA fine-tunes.
    pub adapter: Option<PathBuf>,
    pub sample_grid: Option<PathBuf>,
    pub weights_checksum: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ValidationSummary {
    pub step: u64,
    pub val_loss: f64,
    pub val_loss_ema: f64,
}

#[derive(Serialize)]
struct StepRecord {
    step: u64,
    loss: f64,
    lr: f64,
    grad_norm: f64,
    images_per_s: f64,
    elapsed_s: f64,
}

#[derive(Serialize)]
struct ValidationRecord<'a> {
    step: u64,
    val_loss: f64,
    val_loss_ema: f64,
    bands: &'a [f64],
    bands_ema: &'a [f64],
    pairs: usize,
    improved: bool,
}

#[derive(Serialize)]
struct EventRecord<'a> {
    step: u64,
    event: &'a str,
    detail: String,
}

/// Loads the dataset and checks it against the model's class count.
fn load_data(cfg: &RunConfig) -> Result<(Arc<ImageSet>, Split), TrainError> {
    let set = source::load(&cfg.data)?;
    if !set.skipped.is_empty() {
        eprintln!("warning: {} unreadable image file(s) skipped, e.g. {}: {}", set.skipped.len(), set.skipped[0].path.display(), set.skipped[0].reason);
    }
    let classes = set.num_classes() as i64;
    if cfg.model.num_classes > 0 && classes > cfg.model.num_classes {
        return Err(TrainError::Config(format!("model.num_classes = {} but the data has {classes} classes", cfg.model.num_classes)));
    }
    if cfg.model.num_classes == 0 && classes > 1 {
        eprintln!("note: the data has {classes} classes but model.num_classes = 0: training an unconditional model");
    }
    if cfg.data.check {
        for w in data_check_warnings(cfg, &set)? {
            eprintln!("data check: {w}");
        }
    }
    let split = if cfg.data.val_path.is_some() {
        Split { train: (0..set.len()).collect(), val: Vec::new() }
    } else {
        Split::new(&set.ids, cfg.data.val_fraction, cfg.seed)
    };
    if split.train.is_empty() {
        return Err(TrainError::Config("no training images left after the validation split (data.val_fraction)".into()));
    }
    Ok((Arc::new(set), split))
}

/// The data check's warnings for the configured dataset (the full file check for folders).
fn data_check_warnings(cfg: &RunConfig, set: &ImageSet) -> Result<Vec<String>, TrainError> {
    let opts = CheckOptions { model_size: cfg.data.image_size, max_pixels: cfg.data.max_pixels, ..Default::default() };
    match (cfg.data.source, &cfg.data.path) {
        (SourceKind::Folder, Some(path)) => {
            let report = check_folder(path, &opts)?;
            let mut warnings = report.warnings;
            if !warnings.is_empty() {
                warnings.push(format!("details: difforge data check {}", path.display()));
            }
            Ok(warnings)
        }
        _ => Ok(check_set(set, &opts)),
    }
}

/// The tensors of one micro-batch.
pub(crate) struct MicroBatch {
    x_t: Tensor,
    t: Tensor,
    classes: Option<Tensor>,
    target: Tensor,
    weights: Tensor,
}

pub(crate) fn make_micro_batch(model: &DiffusionModel, batch: &Batch, draw_index: u64) -> MicroBatch {
    let cfg = &model.config;
    let (n, c, s) = (batch.size as i64, batch.channels as i64, batch.side as i64);
    let mut rng = rng_for(cfg.seed, Stream::Noise, draw_index);
    let ts: Vec<usize> = (0..n).map(|_| rng.random_range(0..cfg.diffusion.timesteps)).collect();
    let null = cfg.model.null_class();
    let classes: Vec<i64> = batch.labels.iter().map(|&l| if l < 0 || rng.random_bool(cfg.diffusion.class_dropout) { null } else { l }).collect();
    let eps = gaussian(cfg.seed, Stream::Noise, draw_index, (n * c * s * s) as usize);

    let dev = model.device;
    let x0 = Tensor::from_slice(&batch.images).view([n, c, s, s]).to_device(dev);
    let eps = Tensor::from_slice(&eps).view([n, c, s, s]).to_device(dev);
    let ab: Vec<f32> = ts.iter().map(|&t| model.schedule.alphas_cumprod[t] as f32).collect();
    let ab = Tensor::from_slice(&ab).view([n, 1, 1, 1]).to_device(dev);
    let (a, sg) = (ab.sqrt(), (-&ab + 1.0).sqrt());
    let x_t = &x0 * &a + &eps * &sg;
    let target = cfg.diffusion.prediction.target(&x0, &eps, &a, &sg);
    let gamma = cfg.diffusion.min_snr_gamma;
    let w: Vec<f32> =
        ts.iter().map(|&t| if gamma > 0.0 { cfg.diffusion.prediction.min_snr_weight(model.schedule.snr(t), gamma) as f32 } else { 1.0 }).collect();
    let ts_i64: Vec<i64> = ts.iter().map(|&t| t as i64).collect();
    MicroBatch {
        x_t,
        t: Tensor::from_slice(&ts_i64).to_device(dev),
        classes: (cfg.model.num_classes > 0).then(|| Tensor::from_slice(&classes).to_device(dev)),
        target,
        weights: Tensor::from_slice(&w).to_device(dev),
    }
}

/// The weighted MSE of one micro-batch.
pub(crate) fn loss_of(model: &DiffusionModel, mb: &MicroBatch) -> Tensor {
    let out = tch::autocast(model.autocast(), || model.unet.forward(&mb.x_t, &mb.t, mb.classes.as_ref(), true));
    let per_image = (out.to_kind(Kind::Float) - &mb.target).square().mean_dim([1i64, 2, 3].as_slice(), false, Kind::Float);
    (per_image * &mb.weights).mean(Kind::Float)
}

fn write_samples(model: &DiffusionModel, run_dir: &Path, step: u64) -> Result<PathBuf, TrainError> {
    let cfg = &model.config;
    let (classes, seeds) = class_grid_spec(cfg.model.num_classes, cfg.train.sample_per_class, derive_seed(cfg.seed, Stream::Sample, 0) >> 16);
    let spec = GenerateSpec { classes, seeds, sampler: &cfg.sample, use_ema: true, max_batch: 256, fixed_batch: false };
    let images = generate(model, &spec);
    let path = run_dir.join("samples").join(format!("step-{step:08}.png"));
    let columns = if cfg.model.num_classes > 0 { cfg.train.sample_per_class } else { 8 };
    save_grid(&images, columns, &path).map_err(|e| TrainError::io(&path, e))?;
    Ok(path)
}

/// What one step did.
struct StepOutcome {
    loss: f64,
    grad_norm: f64,
    lr: f64,
    applied: bool,
}

struct Trainer {
    cfg: RunConfig,
    run_dir: PathBuf,
    model: DiffusionModel,
    opt: AdamW,
    ema_params: Vec<Tensor>,
    loader: Loader,
    /// Base-model samples mixed into every step (prior preservation).
    prior: Option<Loader>,
    validator: Option<Validator>,
    metrics: JsonLines,
    val_log: JsonLines,
    /// Sample-quality evaluations (eval.jsonl).
    eval_log: JsonLines,
    state: TrainState,
    recent: VecDeque<f64>,
    bad_streak: u32,
    injected: HashSet<u64>,
    last_checkpoint: Option<PathBuf>,
    best_checkpoint: Option<PathBuf>,
    last_validation: Option<ValidationSummary>,
}

impl Trainer {
    fn step(&mut self) -> StepOutcome {
        let t = &self.cfg.train;
        let step = self.state.step;
        // Dropout is the one draw from libtorch's generator: seed it from the step.
        tch::manual_seed((derive_seed(self.cfg.seed, Stream::Dropout, step) >> 1) as i64);
        self.opt.zero_grad();
        let mut loss_sum = 0.0;
        for micro in 0..t.grad_accum as u64 {
            let draw = step * t.grad_accum as u64 + micro;
            let batch = self.loader.train_batch(draw, t.batch_size);
            let mb = make_micro_batch(&self.model, &batch, draw);
            let mut loss = loss_of(&self.model, &mb) / t.grad_accum as f64;
            if let Some(prior) = self.prior.as_mut() {
                let pb = prior.train_batch(draw, t.batch_size);
                let pmb = make_micro_batch(&self.model, &pb, draw | (1 << 62));
                loss += loss_of(&self.model, &pmb) * (self.cfg.finetune.prior_weight / t.grad_accum as f64);
            }
            if t.debug_nan_steps.contains(&step) && self.injected.insert(step) {
                loss *= f64::NAN;
            }
            loss.backward();
            loss_sum += loss.double_value(&[]);
        }
        let grad_norm = self.opt.grad_norm();
        let lr = learning_rate(t, step) * self.state.lr_scale;
        let applied = loss_sum.is_finite() && grad_norm.is_finite();
        if applied {
            if t.grad_clip > 0.0 && grad_norm > t.grad_clip {
                self.opt.scale_grads(t.grad_clip / (grad_norm + 1e-6));
            }
            self.opt.step(lr);
            ema::update(&self.ema_params, self.opt.params(), ema::ema_decay(t.ema_decay, self.opt.steps));
            self.state.optimizer_steps = self.opt.steps;
        }
        self.state.step += 1;
        self.state.images_seen += (t.batch_size * t.grad_accum) as u64;
        self.state.last_loss = loss_sum;
        StepOutcome { loss: loss_sum, grad_norm, lr, applied }
    }

    fn event(&mut self, event: &str, detail: String) -> Result<(), TrainError> {
        eprintln!("{event} at step {}: {detail}", self.state.step);
        let rec = EventRecord { step: self.state.step, event, detail };
        self.metrics.write(&rec).map_err(|e| TrainError::io(self.metrics.path(), e))
    }

    /// Logs losses far above the recent ones.
    fn watch_spikes(&mut self, loss: f64) -> Result<(), TrainError> {
        let z = self.cfg.train.spike_zscore;
        if self.recent.len() >= 20 && z > 0.0 {
            let n = self.recent.len() as f64;
            let mean = self.recent.iter().sum::<f64>() / n;
            let sd = (self.recent.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / n).sqrt();
            if sd > 0.0 && (loss - mean) / sd > z {
                self.state.loss_spikes += 1;
                self.event("loss_spike", format!("loss {loss:.4} is {:.1} standard deviations above the recent mean {mean:.4}", (loss - mean) / sd))?;
            }
        }
        self.recent.push_back(loss);
        if self.recent.len() > 100 {
            self.recent.pop_front();
        }
        Ok(())
    }

    /// Handles a skipped step; Some(reason) when the run must stop.
    fn handle_bad_step(&mut self, out: &StepOutcome) -> Result<Option<String>, TrainError> {
        self.state.skipped_steps += 1;
        self.bad_streak += 1;
        self.event("skipped_step", format!("non-finite loss {} or gradient norm {}; optimiser state untouched", out.loss, out.grad_norm))?;
        if self.bad_streak < self.cfg.train.max_bad_steps {
            return Ok(None);
        }
        if self.state.rollbacks >= self.cfg.train.max_rollbacks {
            return Ok(Some(format!(
                "{} consecutive non-finite steps after {} rollback(s) (train.max_rollbacks): stopped",
                self.bad_streak, self.state.rollbacks
            )));
        }
        let Ok(dir) = checkpoint::resolve_latest(&self.run_dir) else {
            return Ok(Some(format!("{} consecutive non-finite steps and no checkpoint to roll back to: stopped", self.bad_streak)));
        };
        let saved = checkpoint::read_state(&dir)?;
        checkpoint::restore_weights(&dir, &mut self.model)?;
        checkpoint::load_optimizer(&dir, &mut self.opt, saved.optimizer_steps, self.model.device)?;
        let (rollbacks, lr_scale) = (self.state.rollbacks + 1, self.state.lr_scale * self.cfg.train.rollback_lr_factor);
        let (skipped, spikes) = (self.state.skipped_steps, self.state.loss_spikes);
        self.state = TrainState { rollbacks, lr_scale, skipped_steps: skipped, loss_spikes: spikes, ..saved };
        self.bad_streak = 0;
        self.event("rollback", format!("reloaded {} (step {}); learning rate scaled to {lr_scale}", dir.display(), self.state.step))?;
        Ok(None)
    }

    /// Runs validation; Some(reason) when early stopping watches its loss and says stop.
    fn validate(&mut self) -> Result<Option<String>, TrainError> {
        let Some(v) = &self.validator else { return Ok(None) };
        let raw: ValidationLoss = v.evaluate(&self.model, &self.model.unet);
        let ema: ValidationLoss = v.evaluate(&self.model, &self.model.ema);
        let step = self.state.step;
        let watched = match self.cfg.train.early_stop_metric.as_str() {
            "val_loss" => Some(raw.loss),
            "val_loss_ema" => Some(ema.loss),
            _ => None,
        };
        let (improved, stop) = match watched {
            Some(value) => self.observe(value)?,
            None => (false, None),
        };
        let rec = ValidationRecord { step, val_loss: raw.loss, val_loss_ema: ema.loss, bands: &raw.bands, bands_ema: &ema.bands, pairs: raw.pairs, improved };
        self.val_log.write(&rec).map_err(|e| TrainError::io(self.val_log.path(), e))?;
        self.last_validation = Some(ValidationSummary { step, val_loss: raw.loss, val_loss_ema: ema.loss });
        Ok(stop)
    }

    /// Runs the sample-quality evaluation and logs it to eval.jsonl; Some(reason) when early
    /// stopping watches one of its metrics and says stop.
    fn evaluate(&mut self, evaluator: &dyn Evaluator) -> Result<Option<String>, TrainError> {
        let step = self.state.step;
        let metrics = evaluator.evaluate(&self.model, step).map_err(|e| TrainError::Other(format!("evaluation at step {step}: {e}")))?;
        let watched = eval_metric(&self.cfg.train.early_stop_metric).map(|(name, _)| name);
        let value = watched.and_then(|name| metrics.iter().find(|(m, _)| m == name)).map(|(_, v)| *v);
        if let (Some(name), None) = (watched, value) {
            return Err(TrainError::Config(format!("train.early_stop_metric = \"eval.{name}\": the evaluation does not compute it (fid needs train.eval_inception_weights, class_accuracy train.eval_classifier and a class-conditional model)")));
        }
        let (improved, stop) = match value {
            Some(v) => self.observe(v)?,
            None => (false, None),
        };
        let mut rec = serde_json::Map::new();
        rec.insert("step".into(), step.into());
        for (name, v) in &metrics {
            rec.insert(name.clone(), serde_json::json!(v));
        }
        rec.insert("improved".into(), improved.into());
        self.eval_log.write(&rec).map_err(|e| TrainError::io(self.eval_log.path(), e))?;
        Ok(stop)
    }

    /// Feeds one value of the early-stopping metric: keeps the best (and its checkpoint) and
    /// counts evaluations without improvement. Returns (improved, Some(reason) to stop).
    fn observe(&mut self, value: f64) -> Result<(bool, Option<String>), TrainError> {
        let t = &self.cfg.train;
        let step = self.state.step;
        let improved = value.is_finite() && self.state.best.as_ref().is_none_or(|b| t.early_stop_mode.improves(value, b.value, t.early_stop_min_delta));
        if improved {
            self.state.best = Some(BestMetric { metric: t.early_stop_metric.clone(), value, step });
            self.state.validations_without_improvement = 0;
            self.best_checkpoint = Some(checkpoint::save_best(&self.run_dir, &self.model, &self.opt, &self.state)?);
        } else {
            self.state.validations_without_improvement += 1;
        }
        let t = &self.cfg.train;
        let patience = t.early_stop_patience;
        if patience > 0 && self.state.validations_without_improvement >= patience && step >= t.early_stop_min_steps {
            let best = self.state.best.as_ref().map_or(String::new(), |b| format!(" (best {:.6} at step {})", b.value, b.step));
            return Ok((
                improved,
                Some(format!(
                    "early stopping: {} did not improve by more than {} in {patience} evaluations{best}",
                    t.early_stop_metric, t.early_stop_min_delta
                )),
            ));
        }
        Ok((improved, None))
    }
}

/// Picks the config and starting point: fresh, or from the newest good checkpoint.
fn start_state(config: RunConfig, opts: &TrainOptions) -> Result<(RunConfig, Option<(PathBuf, TrainState)>), TrainError> {
    if !opts.resume {
        return Ok((config, None));
    }
    let dir = checkpoint::resolve_latest(&opts.out_dir)?;
    let mut cfg = checkpoint::read_config(&dir)?;
    if !opts.resume_sets.is_empty() {
        if let Some(bad) = opts.resume_sets.iter().find(|s| !s.trim_start().starts_with("train.")) {
            return Err(TrainError::Config(format!("--set {bad}: only [train] keys can change on --resume")));
        }
        cfg = RunConfig::from_toml(&cfg.to_toml(), &opts.resume_sets, "the resumed run's config")?;
    }
    let state = checkpoint::read_state(&dir)?;
    Ok((cfg, Some((dir, state))))
}

pub fn train(config: RunConfig, opts: &TrainOptions) -> Result<TrainSummary, TrainError> {
    let (cfg, resume_from) = start_state(config, opts)?;
    let device = device::prepare(&cfg.train.device, cfg.train.threads, cfg.train.precision).map_err(TrainError::Config)?;
    let run_dir = opts.out_dir.clone();
    std::fs::create_dir_all(&run_dir).map_err(|e| TrainError::io(&run_dir, e))?;
    checkpoint::remove_stale_temporaries(&run_dir)?;
    difforge_core::write_atomic(&run_dir.join("config.toml"), cfg.to_toml().as_bytes()).map_err(|e| TrainError::io(run_dir.join("config.toml"), e))?;

    let (set, split) = load_data(&cfg)?;
    let mut loader = Loader::new(set.clone(), split.train.clone(), cfg.data.image_size, cfg.data.crop, cfg.data.augment.clone(), cfg.seed);
    if cfg.data.balance == Balance::Class {
        loader = loader.balanced();
    }
    let (model, state) = match &resume_from {
        Some((dir, state)) => (checkpoint::load_model(dir, &cfg, device)?, state.clone()),
        None => {
            let mut model = DiffusionModel::new(&cfg, device)?;
            if let Some(from) = &cfg.finetune.from {
                let dir = checkpoint::resolve(from)?;
                checkpoint::init_from(&dir, &mut model)?;
                eprintln!("fine-tuning from {}{}", dir.display(), if cfg.lora.is_some() { " with LoRA adapters (the base is frozen)" } else { "" });
            }
            (model, TrainState::fresh())
        }
    };
    let t = cfg.train.clone();
    if t.eval_every > 0 && opts.evaluator.is_none() {
        return Err(TrainError::Config("train.eval_every > 0, but this command does not run the sample evaluation (use `difforge train` or `difforge finetune`, or set train.eval_every = 0)".into()));
    }
    let (trainable, ema_params) = model.trainable();
    let mut opt = AdamW::new(trainable, AdamWConfig { beta1: t.adam_beta1, beta2: t.adam_beta2, eps: t.adam_eps, weight_decay: t.weight_decay });
    let prior = crate::prior::prior_loader(&cfg, device)?;
    if let Some((dir, st)) = &resume_from {
        checkpoint::load_optimizer(dir, &mut opt, st.optimizer_steps, device)?;
        eprintln!("resuming from {} (step {})", dir.display(), st.step);
    }
    let (metrics_path, val_path, eval_path) = (run_dir.join("metrics.jsonl"), run_dir.join("validation.jsonl"), run_dir.join("eval.jsonl"));
    for p in [&metrics_path, &val_path, &eval_path] {
        truncate_after_step(p, state.step).map_err(|e| TrainError::io(p, e))?;
    }
    let validator = match (t.val_every > 0).then(|| crate::validation::validation_batch(&cfg, &set, &split)).transpose()?.flatten() {
        Some(batch) => Some(Validator::new(&model, &batch, t.val_repeats, t.val_bands)),
        None => None,
    };
    let mut tr = Trainer {
        ema_params,
        prior,
        opt,
        loader,
        validator,
        metrics: JsonLines::append(&metrics_path).map_err(|e| TrainError::io(&metrics_path, e))?,
        val_log: JsonLines::append(&val_path).map_err(|e| TrainError::io(&val_path, e))?,
        eval_log: JsonLines::append(&eval_path).map_err(|e| TrainError::io(&eval_path, e))?,
        state,
        recent: VecDeque::new(),
        bad_streak: 0,
        injected: HashSet::new(),
        last_checkpoint: None,
        best_checkpoint: None,
        last_validation: None,
        run_dir: run_dir.clone(),
        cfg,
        model,
    };

    let start = Instant::now();
    let elapsed_before = tr.state.elapsed_s;
    let first_step = tr.state.step;
    let mut progress = Progress::new("train", t.steps, first_step);
    let mut last_grid = None;
    let mut stopped_because = None;
    let mut diverged = false;
    let per_step = (t.batch_size * t.grad_accum) as u64;

    while tr.state.step < t.steps {
        let out = tr.step();
        tr.state.elapsed_s = elapsed_before + start.elapsed().as_secs_f64();
        if out.applied {
            tr.bad_streak = 0;
            tr.watch_spikes(out.loss)?;
        } else if let Some(reason) = tr.handle_bad_step(&out)? {
            stopped_because = Some(reason);
            diverged = true;
            break;
        }
        let step = tr.state.step;
        let rate = (step.saturating_sub(first_step) * per_step) as f64 / start.elapsed().as_secs_f64().max(1e-9);
        if step.is_multiple_of(t.log_every) || step == t.steps {
            let rec = StepRecord { step, loss: out.loss, lr: out.lr, grad_norm: out.grad_norm, images_per_s: rate, elapsed_s: tr.state.elapsed_s };
            tr.metrics.write(&rec).map_err(|e| TrainError::io(tr.metrics.path(), e))?;
            progress.update(step, &format!("loss {:.4} lr {:.2e} {rate:.0} img/s", out.loss, out.lr));
        }
        let interrupted = opts.stop.load(Ordering::SeqCst);
        let last = step == t.steps || interrupted;
        if t.val_every > 0 && (step.is_multiple_of(t.val_every) || last) {
            stopped_because = tr.validate()?;
        }
        if let Some(evaluator) = opts.evaluator.as_deref() {
            if t.eval_every > 0 && (step.is_multiple_of(t.eval_every) || last) {
                stopped_because = stopped_because.or(tr.evaluate(evaluator)?);
            }
        }
        if interrupted && stopped_because.is_none() {
            stopped_because = Some(format!("interrupted at step {step} (checkpoint written)"));
        }
        let stopping = stopped_because.is_some();
        if t.sample_every > 0 && step.is_multiple_of(t.sample_every) && !last && !stopping {
            last_grid = Some(write_samples(&tr.model, &run_dir, step)?);
        }
        if last || stopping || (t.checkpoint_every > 0 && step.is_multiple_of(t.checkpoint_every)) {
            tr.last_checkpoint = Some(checkpoint::save(&run_dir, &tr.model, &tr.opt, &tr.state, t.keep_checkpoints)?);
        }
        if stopping {
            break;
        }
    }
    progress.finish();
    let interrupted = opts.stop.load(Ordering::SeqCst);
    if !interrupted {
        last_grid = Some(write_samples(&tr.model, &run_dir, tr.state.step)?);
    }
    let adapter = match (&tr.cfg.lora, &tr.cfg.finetune.from) {
        (Some(_), Some(from)) => {
            let path = run_dir.join("lora.safetensors");
            crate::adapter::save(&path, &tr.model, &checkpoint::resolve(from)?)?;
            Some(path)
        }
        _ => None,
    };
    let run_images = (tr.state.step.saturating_sub(first_step)) * per_step;
    let summary = TrainSummary {
        run_dir: run_dir.clone(),
        final_step: tr.state.step,
        steps_planned: t.steps,
        stopped_because: stopped_because.unwrap_or_else(|| "finished all steps".to_string()),
        diverged,
        final_loss: tr.state.last_loss,
        mean_loss_last_100: if tr.recent.is_empty() { f64::NAN } else { tr.recent.iter().sum::<f64>() / tr.recent.len() as f64 },
        skipped_steps: tr.state.skipped_steps,
        rollbacks: tr.state.rollbacks,
        loss_spikes: tr.state.loss_spikes,
        final_validation: tr.last_validation.clone(),
        best: tr.state.best.clone(),
        best_checkpoint: tr.best_checkpoint.clone().or_else(|| Some(run_dir.join("checkpoints").join(checkpoint::BEST_DIR)).filter(|p| p.is_dir())),
        wall_time_s: start.elapsed().as_secs_f64(),
        images_per_s: run_images as f64 / start.elapsed().as_secs_f64().max(1e-9),
        device: device::describe(device),
        threads: device::resolve_threads(t.threads),
        parameters: tr.model.parameter_count(),
        train_images: split.train.len(),
        val_images: split.val.len(),
        skipped_files: set.skipped.len(),
        checkpoint: tr.last_checkpoint.clone(),
        adapter,
        sample_grid: last_grid,
        weights_checksum: tr.model.checksum(),
    };
    let json = serde_json::to_vec_pretty(&summary).map_err(|e| TrainError::Other(e.to_string()))?;
    difforge_core::write_atomic(&run_dir.join("summary.json"), &json).map_err(|e| TrainError::io(run_dir.join("summary.json"), e))?;
    Ok(summary)
}

/// The device a command asks for (for commands that load a checkpoint).
pub fn device_for(device: &str, threads: usize) -> Result<Device, TrainError> {
    device::prepare(device, threads, crate::config::Precision::Fp32).map_err(TrainError::Config)
}
