//! The training loop. Every random draw of step s comes from (seed, s), the data of step s from
//! its stream position, and the whole state lives in checkpoints: so a run of N steps gives the
//! same weights every time on the same machine and thread count, and a resumed run continues
//! exactly where the interrupted one was. Non-finite steps are skipped and, when they persist,
//! rolled back; validation runs every `val_every` steps and drives early stopping.
//!
//! Under a launcher (torchrun, SLURM, `difforge launch`) each process is one rank of a
//! data-parallel run (`parallel.rs`): it trains on its rows of every global batch, validates its
//! share of the validation pairs, and only rank 0 writes (records, samples, checkpoints, the
//! summary) while the others wait at a barrier.

use crate::data::TrainBatches;
use crate::error::TrainError;
use crate::graph_step::StepGraphs;
use crate::kohya_record::{training_record, DatasetRecord};
use crate::logs::{EventRecord, RunLogs, StepRecord, ValidationRecord};
use crate::lr::learning_rate;
use crate::parallel::{self, DataParallel, Shard};
use crate::previews::Previews;
use crate::rank_gpu::{gpus_per_task_from_env, rank_gpu, GpuPlacement};
use crate::run_folder::{RunFolder, Use};
use crate::step::{StepData, StepOutcome, Stepper};
use crate::world::{Launcher, World};
use difforge_config::{eval_metric, RunConfig};
use difforge_core::Progress;
use difforge_model::checkpoint::{self, BestMetric, TrainState, OPTIMIZER_FILE};
use difforge_model::validation::{validation_batch, Validator};
use difforge_model::{device, DiffusionModel, Weights};
use difforge_nn::{AdamW, AdamWConfig, FlatBuffer};
use serde::Serialize;
use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tch::Device;

/// The sample-quality evaluation the trainer runs every `train.eval_every` steps: metric names
/// (those of [`difforge_config::EVAL_METRICS`]) and values for the model at a step.
pub type Evaluate = Box<dyn FnMut(&DiffusionModel, u64) -> Result<Vec<(String, f64)>, String>>;

#[derive(Default)]
pub struct TrainOptions {
    pub out_dir: PathBuf,
    /// Continue from the newest good checkpoint in `out_dir`.
    pub resume: bool,
    /// Replace a run already in `out_dir` (without it, such a folder is refused).
    pub overwrite: bool,
    /// Overrides allowed on resume (train.steps and other [train] keys).
    pub resume_sets: Vec<String>,
    /// Set by SIGINT/SIGTERM: finish the step, checkpoint, stop.
    pub stop: Arc<AtomicBool>,
    /// Runs the sample-quality evaluation every `train.eval_every` steps (None: not run).
    pub evaluator: Option<Evaluate>,
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
    /// Which CPU kernels ran (train.cpu_kernels): portable results are the same on any x86-64
    /// machine with the same libtorch and thread count.
    pub cpu_kernels: String,
    /// Peak bytes held by tensors on the GPU during this process's training (the CUDA caching
    /// allocator's count, as torch.cuda.max_memory_allocated); absent on the CPU.
    pub peak_gpu_memory_bytes: Option<u64>,
    pub parameters: i64,
    pub train_images: usize,
    pub val_images: usize,
    pub skipped_files: usize,
    pub checkpoint: Option<PathBuf>,
    /// The LoRA adapter file, for LoRA fine-tunes.
    pub adapter: Option<PathBuf>,
    /// The files written for other tools (a Stable Diffusion run's LoRA files or diffusers folder).
    pub exported: Vec<PathBuf>,
    pub sample_grid: Option<PathBuf>,
    pub weights_checksum: f64,
    /// The data-parallel run this process was part of (absent for one process).
    pub parallel: Option<ParallelSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ParallelSummary {
    pub rank: usize,
    pub world_size: usize,
    pub backend: String,
    /// Each rank's weights checksum at the end, in rank order: equal when the ranks agree.
    pub rank_checksums: Vec<f64>,
    /// Mean wall time of the gradient all-reduce per optimiser step on this rank (waiting for
    /// the slowest rank included).
    pub allreduce_ms_per_step: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ValidationSummary {
    pub step: u64,
    pub val_loss: f64,
    pub val_loss_ema: f64,
}

/// Restores the optimiser moments saved in a checkpoint.
fn load_optimizer(dir: &Path, opt: &mut AdamW, steps: u64, device: Device) -> Result<(), TrainError> {
    let named = checkpoint::read_tensors(dir, OPTIMIZER_FILE, device)?;
    opt.load_state(&named, steps).map_err(|e| difforge_model::ModelError::checkpoint(dir.join(OPTIMIZER_FILE), e).into())
}

struct Trainer {
    cfg: RunConfig,
    run_dir: PathBuf,
    stepper: Stepper,
    batches: TrainBatches,
    /// Base-model samples mixed into every step (prior preservation).
    prior: Option<difforge_data::Loader>,
    validator: Option<Validator>,
    logs: RunLogs,
    state: TrainState,
    /// The training images as an exported LoRA's metadata describes them.
    dataset_record: DatasetRecord,
    recent: VecDeque<f64>,
    bad_streak: u32,
    injected: HashSet<u64>,
    last_checkpoint: Option<PathBuf>,
    best_checkpoint: Option<PathBuf>,
    last_validation: Option<ValidationSummary>,
    /// The process group of a data-parallel run.
    parallel: Option<DataParallel>,
    previews: Previews,
}

impl Trainer {
    fn step(&mut self) -> Result<StepOutcome, TrainError> {
        let t = &self.cfg.train;
        let step = self.state.step;
        let lr = learning_rate(t, step) * self.state.lr_scale;
        let inject_nan = t.debug_nan_steps.contains(&step) && self.injected.insert(step);
        let batch_size = t.batch_size;
        let parallel = self.parallel.as_ref();
        let shard = parallel.map_or(Shard::WHOLE, DataParallel::shard);
        let rank_local = self.batches.rank_local();
        let batches = &mut self.batches;
        let mut batch = |draw: u64| batches.batch(draw, batch_size, shard);
        let prior_weight = self.cfg.finetune.prior_weight;
        let mut prior_batch = self.prior.as_mut().map(|p| move |draw: u64| Ok(p.train_batch(draw, batch_size)));
        let prior = prior_batch.as_mut().map(|f| (f as &mut dyn FnMut(u64) -> Result<difforge_data::Batch, TrainError>, prior_weight));
        let out = self.stepper.step(t, step, lr, StepData { batch: &mut batch, rank_local, prior, inject_nan, parallel })?;
        if out.applied {
            self.state.optimizer_steps = self.stepper.opt.steps;
        }
        self.state.step += 1;
        self.state.images_seen += (t.batch_size * t.grad_accum) as u64;
        self.state.last_loss = out.loss;
        Ok(out)
    }

    fn model(&self) -> &DiffusionModel {
        &self.stepper.model
    }

    /// True for the process that writes: the only one, or rank 0.
    fn writes(&self) -> bool {
        self.parallel.as_ref().is_none_or(|p| p.rank() == 0)
    }

    /// Rank 0 writes the checkpoint while the other ranks wait.
    fn save(&mut self) -> Result<(), TrainError> {
        if self.writes() {
            let keep = self.cfg.train.keep_checkpoints;
            self.last_checkpoint = Some(checkpoint::save(&self.run_dir, &self.stepper.model, self.stepper.opt.state(), &self.state, keep)?);
        }
        self.barrier("waiting for rank 0's checkpoint")
    }

    fn barrier(&self, what: &str) -> Result<(), TrainError> {
        self.parallel.as_ref().map_or(Ok(()), |p| p.barrier(what))
    }

    /// The validation loss of one set of weights; a data-parallel run splits the pairs over the
    /// ranks and sums the parts.
    fn validation_loss(&self, v: &Validator, w: Weights) -> Result<difforge_model::validation::ValidationLoss, TrainError> {
        let Some(p) = &self.parallel else { return Ok(v.evaluate(self.model(), w)?) };
        let m = v.pairs();
        let rows = p.shard().rows(m);
        let mut losses = vec![0.0; m];
        let mine = v.per_pair_in(self.model(), w, rows.clone())?;
        losses[rows].copy_from_slice(&mine);
        p.sum(&mut losses, "summing the validation losses")?;
        Ok(v.summarise(&losses))
    }

    fn event(&mut self, event: &str, detail: String) -> Result<(), TrainError> {
        tracing::warn!("{event} at step {}: {detail}", self.state.step);
        self.logs.event(&EventRecord { step: self.state.step, event, detail })
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
        checkpoint::restore_weights(&dir, &mut self.stepper.model)?;
        let device = self.stepper.model.device();
        load_optimizer(&dir, &mut self.stepper.opt, saved.optimizer_steps, device)?;
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
        let raw = self.validation_loss(v, Weights::Raw)?;
        let ema = self.validation_loss(v, Weights::Ema)?;
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
        self.logs.validation(&rec)?;
        if self.writes() {
            let best = if improved { " (best so far)" } else { "" };
            tracing::info!("step {step}: validation loss {:.4}, EMA {:.4}{best}", raw.loss, ema.loss);
        }
        self.last_validation = Some(ValidationSummary { step, val_loss: raw.loss, val_loss_ema: ema.loss });
        Ok(stop)
    }

    /// Runs the sample-quality evaluation and logs it to eval.jsonl; Some(reason) when early
    /// stopping watches one of its metrics and says stop.
    fn evaluate(&mut self, evaluator: &mut Evaluate) -> Result<Option<String>, TrainError> {
        let step = self.state.step;
        let metrics = evaluator(self.model(), step).map_err(|e| TrainError::Other(format!("evaluation at step {step}: {e}")))?;
        let watched = eval_metric(&self.cfg.train.early_stop_metric).map(|(name, _)| name);
        let value = watched.and_then(|name| metrics.iter().find(|(m, _)| m == name)).map(|(_, v)| *v);
        if let (Some(name), None) = (watched, value) {
            return Err(difforge_core::ConfigError::new(
                "train.early_stop_metric",
                format!("\"eval.{name}\""),
                "a metric the evaluation computes (fid needs train.eval_inception_weights, class_accuracy train.eval_classifier and a class-conditional model)",
            )
            .into());
        }
        let (improved, stop) = match value {
            Some(v) => self.observe(v)?,
            None => (false, None),
        };
        self.logs.evaluation(step, &metrics, improved)?;
        Ok(stop)
    }

    /// The sample-quality evaluation runs on rank 0 alone (its features and samples are not
    /// split); whether it says stop is then told to every rank.
    fn evaluate_on_main(&mut self, evaluator: &mut Evaluate) -> Result<Option<String>, TrainError> {
        let stop = if self.writes() { self.evaluate(evaluator)? } else { None };
        let Some(p) = &self.parallel else { return Ok(stop) };
        let says_stop = p.main_says(stop.is_some(), "sharing the evaluation's verdict")?;
        Ok(stop.or_else(|| says_stop.then(|| "early stopping (rank 0's evaluation; see its eval.jsonl)".to_string())))
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
            if self.writes() {
                self.best_checkpoint = Some(checkpoint::save_best(&self.run_dir, &self.stepper.model, self.stepper.opt.state(), &self.state)?);
            }
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

/// The run's device. The ranks of a data-parallel run on CUDA each take a GPU of their own
/// ([`rank_gpu`]: the GPU of their local rank, or the one the launcher bound to their task), and
/// on the CPU share the cores (unless train.threads says how many), as torchrun's one-thread
/// default would not.
fn prepare_device(cfg: &RunConfig, world: &World) -> Result<Device, TrainError> {
    let mut settings = device::DeviceSettings::of_run(&cfg.train);
    if world.is_distributed() && settings.threads == 0 {
        settings.threads = (device::resolve_threads(0) / world.local_size.max(1)).max(1);
    }
    let device = device::prepare(&settings)?;
    match device {
        Device::Cuda(n) if world.is_distributed() => {
            let placement = GpuPlacement {
                device_count: tch::Cuda::device_count().max(0) as usize,
                local_size: world.local_size,
                local_rank: world.local_rank,
                requested: cfg.train.device.contains(':').then_some(n),
                backend: parallel::backend_for(&cfg.train, device),
                gpus_per_task: world.launcher == Launcher::Slurm && gpus_per_task_from_env(&|v| std::env::var(v).ok()),
            };
            Ok(Device::Cuda(rank_gpu(&placement, &cfg.train.device)?))
        }
        d => Ok(d),
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
            return Err(difforge_core::ConfigError::new("--set", bad, "a [train] key: only those can change on --resume").into());
        }
        cfg = RunConfig::from_toml(&cfg.to_toml(), &opts.resume_sets, "the resumed run's config")?;
    }
    let state = checkpoint::read_state(&dir)?;
    Ok((cfg, Some((dir, state))))
}

/// The model to train: from a checkpoint (resume), from a base (fine-tune) or fresh.
fn starting_model(cfg: &RunConfig, resume_from: &Option<(PathBuf, TrainState)>, device: Device) -> Result<(DiffusionModel, TrainState), TrainError> {
    if let Some((dir, state)) = resume_from {
        return Ok((checkpoint::load_model(dir, cfg, device)?, state.clone()));
    }
    let mut model = DiffusionModel::new(cfg, device)?;
    if let Some(from) = &cfg.finetune.from {
        let dir = checkpoint::resolve(from)?;
        checkpoint::init_from(&dir, &mut model)?;
        tracing::info!("fine-tuning from {}{}", dir.display(), if cfg.lora.is_some() { " with LoRA adapters (the base is frozen)" } else { "" });
    }
    let state = TrainState { base_fingerprint: model.family().base_fingerprint()?, ..TrainState::fresh() };
    Ok((model, state))
}

pub fn train(config: RunConfig, mut opts: TrainOptions) -> Result<TrainSummary, TrainError> {
    let how = match (opts.resume, opts.overwrite) {
        (true, _) => Use::Resume,
        (false, true) => Use::Overwrite,
        (false, false) => Use::New,
    };
    let world = World::from_env().map_err(|e| TrainError::Other(format!("this process's place in a multi-process run: {e}")))?;
    let writes = world.is_main();
    // Held until training ends: a second trainer on this folder is refused. Only rank 0 of a
    // data-parallel run owns the folder; the others only read it (on resume).
    let _folder = if writes { Some(RunFolder::open(&opts.out_dir, how)?) } else { None };
    let (cfg, resume_from) = start_state(config, &opts)?;
    parallel::check_batch(&cfg.train, &world)?;
    let device = prepare_device(&cfg, &world)?;
    device::reset_cuda_peak_memory(device);
    let config_hash = difforge_core::sha256_hex(cfg.to_toml().as_bytes());
    let data_parallel = DataParallel::join(&world, &cfg.train, &config_hash, device)?;
    let run_dir = opts.out_dir.clone();
    if writes {
        difforge_core::write_atomic(&run_dir.join("config.toml"), cfg.to_toml().as_bytes()).map_err(|e| TrainError::io(run_dir.join("config.toml"), e))?;
    }

    let (model, mut state) = starting_model(&cfg, &resume_from, device)?;
    let mut data_cfg = cfg.clone();
    data_cfg.data.check &= writes; // the data check's report is rank 0's to write
    let (set, split) = crate::data::load(&data_cfg, model.family(), &run_dir)?;
    state.data_pixels = checkpoint::PixelStats::of(&set, &split.train);
    let classes = model.family().condition_kind().classes().map(|k| k as usize);
    let batches = TrainBatches::new(&cfg, &set, &split, &world, classes)?;
    let dataset_record = DatasetRecord::of(&cfg.data, &set, &split.train);
    let t = cfg.train.clone();
    if t.eval_every > 0 && opts.evaluator.is_none() {
        return Err(difforge_core::ConfigError::new(
            "train.eval_every",
            t.eval_every,
            "0 for this command, which does not run the sample evaluation (use `difforge train` or `difforge finetune`)",
        )
        .into());
    }
    let (trainable, ema_params) = model.trainable();
    let mut opt = AdamW::new(trainable, AdamWConfig { beta1: t.adam_beta1, beta2: t.adam_beta2, eps: t.adam_eps, weight_decay: t.weight_decay })?;
    let ema_params = FlatBuffer::adopt(&ema_params)?;
    // Rank 0 keeps the class images in the run folder; the other ranks make the same ones.
    let class_dir = data_parallel.as_ref().is_none_or(|p| p.rank() == 0).then_some(run_dir.as_path());
    let prior = crate::prior::prior_loader(&cfg, class_dir, device)?;
    if let Some((dir, st)) = &resume_from {
        load_optimizer(dir, &mut opt, st.optimizer_steps, device)?;
        tracing::info!("resuming from {} (step {})", dir.display(), st.step);
    }
    if let Some(p) = &data_parallel {
        let mut start: Vec<&tch::Tensor> = opt.state_buffers().to_vec();
        start.push(ema_params.data());
        p.broadcast_from_main(&start)?;
    }
    let logs = if writes { RunLogs::open(&run_dir, state.step, cfg.train.logs_to(difforge_config::LogTarget::Tensorboard))? } else { RunLogs::silent() };
    let validator = match (t.val_every > 0).then(|| validation_batch(&cfg, &set, &split)).transpose()?.flatten() {
        Some(batch) => Some(Validator::new(&model, &batch, t.val_repeats, t.val_bands)),
        None => None,
    };
    let previews = Previews::new(&cfg, &model)?;
    let graphs = StepGraphs::for_run(&cfg, device);
    let mut tr = Trainer {
        previews,
        stepper: Stepper { model, opt, ema_params, phases: None, graphs },
        prior,
        batches,
        dataset_record,
        validator,
        logs,
        state,
        recent: VecDeque::new(),
        bad_streak: 0,
        injected: HashSet::new(),
        last_checkpoint: None,
        best_checkpoint: None,
        last_validation: None,
        parallel: data_parallel,
        run_dir: run_dir.clone(),
        cfg,
    };

    let start = Instant::now();
    let elapsed_before = tr.state.elapsed_s;
    let first_step = tr.state.step;
    let mut progress = if tr.writes() { Progress::new("train", t.steps, first_step) } else { Progress::silent("train", t.steps) };
    let mut last_grid = None;
    let mut stopped_because = None;
    let mut diverged = false;
    let per_step = (t.batch_size * t.grad_accum) as u64;

    while tr.state.step < t.steps {
        let out = tr.step()?;
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
            let loss_instance = out.prior_loss.map(|p| out.loss - tr.cfg.finetune.prior_weight * p);
            let record = StepRecord {
                step,
                loss: out.loss,
                loss_instance,
                loss_prior: out.prior_loss,
                lr: out.lr,
                grad_norm: out.grad_norm,
                images_per_s: rate,
                elapsed_s: tr.state.elapsed_s,
            };
            tr.logs.step(&record)?;
            let split = match (loss_instance, out.prior_loss) {
                (Some(i), Some(p)) => format!(" (instance {i:.4}, prior {p:.4})"),
                _ => String::new(),
            };
            progress.update(step, &format!("loss {:.4}{split} lr {:.2e} {rate:.0} img/s", out.loss, out.lr));
        }
        let mut interrupted = opts.stop.load(Ordering::SeqCst);
        if let Some(p) = &tr.parallel {
            interrupted = p.any(interrupted, "sharing the interrupt flag")?;
        }
        let last = step == t.steps || interrupted;
        if t.val_every > 0 && (step.is_multiple_of(t.val_every) || last) {
            stopped_because = tr.validate()?;
        }
        if let Some(evaluator) = opts.evaluator.as_mut() {
            if t.eval_every > 0 && (step.is_multiple_of(t.eval_every) || last) {
                stopped_because = stopped_because.or(tr.evaluate_on_main(evaluator)?);
            }
        }
        if interrupted && stopped_because.is_none() {
            stopped_because = Some(format!("interrupted at step {step} (checkpoint written)"));
        }
        let stopping = stopped_because.is_some();
        if t.sample_every > 0 && step.is_multiple_of(t.sample_every) && !last && !stopping && tr.writes() {
            let grid = tr.previews.write(tr.model(), &run_dir, step)?;
            tr.logs.samples(step, &grid)?;
            last_grid = Some(grid);
        }
        if last || stopping || (t.checkpoint_every > 0 && step.is_multiple_of(t.checkpoint_every)) {
            tr.save()?;
        }
        if stopping {
            break;
        }
    }
    progress.finish();
    let interrupted = opts.stop.load(Ordering::SeqCst);
    let parallel = match &tr.parallel {
        Some(p) => Some(ParallelSummary {
            rank: p.rank(),
            world_size: p.size(),
            backend: p.backend().name().to_string(),
            rank_checksums: p.gather(tr.model().checksum(), "comparing the ranks' weights")?,
            allreduce_ms_per_step: p.mean_reduce_ms(),
        }),
        None => None,
    };
    if let Some(ps) = parallel.as_ref().filter(|ps| ps.rank_checksums.iter().any(|c| *c != ps.rank_checksums[0])) {
        tracing::error!("the ranks' weights differ at the end (checksums {:?}): please report this", ps.rank_checksums);
    }
    if !interrupted && tr.writes() {
        let grid = tr.previews.write(tr.model(), &run_dir, tr.state.step)?;
        tr.logs.samples(tr.state.step, &grid)?;
        last_grid = Some(grid);
    }
    let adapter = match (&tr.cfg.lora, &tr.cfg.finetune.from) {
        (Some(_), Some(from)) if tr.writes() => {
            let path = run_dir.join("lora.safetensors");
            difforge_model::adapter::save(&path, tr.model(), &checkpoint::resolve(from)?)?;
            Some(path)
        }
        _ => None,
    };
    // A family with its own published base (Stable Diffusion) exports in its ecosystem's files:
    // the EMA weights, as sampling uses them.
    let exported = match &tr.cfg.finetune.from {
        None if tr.writes() => {
            let model = tr.model();
            let lora = tr.cfg.lora.as_ref();
            let trained: Vec<_> =
                model.variables(Weights::Ema).into_iter().filter(|(n, _)| lora.is_none_or(|l| model.family().adapter_carries(l, n))).collect();
            let record = training_record(&tr.cfg, tr.state.step, &tr.dataset_record);
            let export = difforge_model::family::Export { lora, record: &record, formats: &tr.cfg.train.export };
            let files = model.family().export_trained(&trained, &export, &run_dir)?;
            for f in &files {
                tracing::info!("wrote {}", f.display());
            }
            files
        }
        _ => Vec::new(),
    };
    let adapter = adapter.or_else(|| exported.first().filter(|_| tr.cfg.lora.is_some()).cloned());
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
        cpu_kernels: device::describe_kernels(t.cpu_kernels),
        peak_gpu_memory_bytes: device::cuda_peak_memory(device).map(|(allocated, _)| allocated),
        parameters: tr.model().parameter_count(),
        train_images: split.train.len(),
        val_images: split.val.len(),
        skipped_files: set.skipped.len(),
        checkpoint: tr.last_checkpoint.clone(),
        adapter,
        exported,
        sample_grid: last_grid,
        weights_checksum: tr.model().checksum(),
        parallel,
    };
    if tr.writes() {
        let json = serde_json::to_vec_pretty(&summary).map_err(|e| TrainError::Other(e.to_string()))?;
        difforge_core::write_atomic(&run_dir.join("summary.json"), &json).map_err(|e| TrainError::io(run_dir.join("summary.json"), e))?;
    }
    // The other ranks wait for rank 0's last writes, so that every exit status says whether they worked.
    tr.barrier("waiting for rank 0 to finish")?;
    Ok(summary)
}
