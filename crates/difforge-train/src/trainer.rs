//! The training loop. Every random draw of step s comes from (seed, s), the data of step s from
//! its stream position, and the whole state lives in checkpoints: so a run of N steps gives the
//! same weights every time on the same machine and thread count, and a resumed run continues
//! exactly where the interrupted one was.

use crate::checkpoint::{self, TrainState};
use crate::config::RunConfig;
use crate::device;
use crate::ema;
use crate::error::TrainError;
use crate::generate::{class_grid_spec, generate, save_grid, GenerateSpec};
use crate::lr::learning_rate;
use crate::metrics::JsonLines;
use crate::model::DiffusionModel;
use crate::optimizer::{AdamW, AdamWConfig};
use crate::progress::Progress;
use difforge_core::{derive_seed, rng_for, Stream};
use difforge_data::{source, Batch, ImageSet, Loader, Split};
use difforge_diffusion::noise::gaussian;
use rand::Rng;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

pub struct TrainOptions {
    pub out_dir: PathBuf,
    /// Continue from the newest good checkpoint in `out_dir`.
    pub resume: bool,
    /// Set by SIGINT/SIGTERM: finish the step, checkpoint, stop.
    pub stop: Arc<AtomicBool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    pub final_step: u64,
    pub steps_planned: u64,
    pub stopped_because: String,
    pub final_loss: f64,
    pub mean_loss_last_100: f64,
    pub skipped_steps: u64,
    pub wall_time_s: f64,
    pub images_per_s: f64,
    pub device: String,
    pub threads: usize,
    pub parameters: i64,
    pub train_images: usize,
    pub val_images: usize,
    pub skipped_files: usize,
    pub checkpoint: Option<PathBuf>,
    pub sample_grid: Option<PathBuf>,
    pub weights_checksum: f64,
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
    let split = Split::new(&set.ids, cfg.data.val_fraction, cfg.seed);
    if split.train.is_empty() {
        return Err(TrainError::Config("no training images left after the validation split (data.val_fraction)".into()));
    }
    Ok((Arc::new(set), split))
}

/// The tensors of one micro-batch: clean images, noisy images, timesteps, classes, target, weights.
struct MicroBatch {
    x_t: Tensor,
    t: Tensor,
    classes: Option<Tensor>,
    target: Tensor,
    weights: Tensor,
}

fn make_micro_batch(model: &DiffusionModel, batch: &Batch, draw_index: u64) -> MicroBatch {
    let cfg = &model.config;
    let (n, c, s) = (batch.size as i64, batch.channels as i64, batch.side as i64);
    let mut rng = rng_for(cfg.seed, Stream::Noise, draw_index);
    let ts: Vec<usize> = (0..n).map(|_| rng.random_range(0..cfg.diffusion.timesteps)).collect();
    let null = cfg.model.null_class();
    let classes: Vec<i64> = batch
        .labels
        .iter()
        .map(|&l| if l < 0 || rng.random_bool(cfg.diffusion.class_dropout) { null } else { l })
        .collect();
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
    let w: Vec<f32> = ts
        .iter()
        .map(|&t| if gamma > 0.0 { cfg.diffusion.prediction.min_snr_weight(model.schedule.snr(t), gamma) as f32 } else { 1.0 })
        .collect();
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
fn loss_of(model: &DiffusionModel, mb: &MicroBatch) -> Tensor {
    let out = tch::autocast(model.autocast(), || model.unet.forward(&mb.x_t, &mb.t, mb.classes.as_ref(), true));
    let per_image = (out.to_kind(Kind::Float) - &mb.target).square().mean_dim([1i64, 2, 3].as_slice(), false, Kind::Float);
    (per_image * &mb.weights).mean(Kind::Float)
}

fn write_samples(model: &DiffusionModel, run_dir: &Path, step: u64) -> Result<PathBuf, TrainError> {
    let cfg = &model.config;
    let (classes, seeds) = class_grid_spec(cfg.model.num_classes, cfg.train.sample_per_class, derive_seed(cfg.seed, Stream::Sample, 0) >> 16);
    let spec = GenerateSpec { classes, seeds, sampler: &cfg.sample, use_ema: true, max_batch: 256 };
    let images = generate(model, &spec);
    let path = run_dir.join("samples").join(format!("step-{step:08}.png"));
    let columns = if cfg.model.num_classes > 0 { cfg.train.sample_per_class } else { 8 };
    save_grid(&images, columns, &path).map_err(|e| TrainError::io(&path, e))?;
    Ok(path)
}

/// Picks the config and starting point: fresh, or from the newest good checkpoint.
fn start_state(config: RunConfig, opts: &TrainOptions) -> Result<(RunConfig, Option<(PathBuf, TrainState)>), TrainError> {
    if !opts.resume {
        return Ok((config, None));
    }
    let dir = checkpoint::resolve(&opts.out_dir)?;
    let cfg = checkpoint::read_config(&dir)?;
    let state = checkpoint::read_state(&dir)?;
    Ok((cfg, Some((dir, state))))
}

pub fn train(config: RunConfig, opts: &TrainOptions) -> Result<TrainSummary, TrainError> {
    let (cfg, resume_from) = start_state(config, opts)?;
    let device = device::prepare(&cfg.train.device, cfg.train.threads, cfg.train.precision).map_err(TrainError::Config)?;
    let run_dir = opts.out_dir.clone();
    std::fs::create_dir_all(&run_dir).map_err(|e| TrainError::io(&run_dir, e))?;
    difforge_core::write_atomic(&run_dir.join("config.toml"), cfg.to_toml().as_bytes()).map_err(|e| TrainError::io(run_dir.join("config.toml"), e))?;

    let (set, split) = load_data(&cfg)?;
    let mut loader = Loader::new(set.clone(), split.train.clone(), cfg.data.image_size, cfg.data.crop, cfg.data.augment.clone(), cfg.seed);

    let (model, mut state) = match &resume_from {
        Some((dir, state)) => (checkpoint::load_model(dir, &cfg, device)?, state.clone()),
        None => (DiffusionModel::new(&cfg, device)?, TrainState { step: 0, optimizer_steps: 0, images_seen: 0, elapsed_s: 0.0, last_loss: f64::NAN }),
    };
    let t = &cfg.train;
    let mut opt = AdamW::new(model.parameters(), AdamWConfig { beta1: t.adam_beta1, beta2: t.adam_beta2, eps: t.adam_eps, weight_decay: t.weight_decay });
    if let Some((dir, st)) = &resume_from {
        checkpoint::load_optimizer(dir, &mut opt, st.optimizer_steps, device)?;
        eprintln!("resuming from {} (step {})", dir.display(), st.step);
    }
    let ema_params = model.ema_parameters();
    let mut metrics = JsonLines::append(&run_dir.join("metrics.jsonl")).map_err(|e| TrainError::io(run_dir.join("metrics.jsonl"), e))?;

    let start = Instant::now();
    let elapsed_before = state.elapsed_s;
    let first_step = state.step;
    let mut progress = Progress::new("train", t.steps, first_step);
    let mut recent: Vec<f64> = Vec::new();
    let mut skipped = 0u64;
    let mut last_checkpoint = None;
    let mut last_grid = None;
    let mut stopped_because = "finished all steps".to_string();

    while state.step < t.steps {
        let step = state.step;
        // Dropout is the one draw from libtorch's generator: seed it from the step.
        tch::manual_seed((derive_seed(cfg.seed, Stream::Dropout, step) >> 1) as i64);
        opt.zero_grad();
        let mut loss_sum = 0.0;
        for micro in 0..t.grad_accum as u64 {
            let draw = step * t.grad_accum as u64 + micro;
            let batch = loader.train_batch(draw, t.batch_size);
            let mb = make_micro_batch(&model, &batch, draw);
            let loss = loss_of(&model, &mb) / t.grad_accum as f64;
            loss.backward();
            loss_sum += loss.double_value(&[]);
        }
        let grad_norm = opt.grad_norm();
        let lr = learning_rate(t, step);
        if loss_sum.is_finite() && grad_norm.is_finite() {
            if t.grad_clip > 0.0 && grad_norm > t.grad_clip {
                opt.scale_grads(t.grad_clip / (grad_norm + 1e-6));
            }
            opt.step(lr);
            ema::update(&ema_params, opt.params(), ema::ema_decay(t.ema_decay, opt.steps));
            state.optimizer_steps = opt.steps;
        } else {
            skipped += 1;
            eprintln!("warning: step {step}: non-finite loss or gradient (loss {loss_sum}, grad norm {grad_norm}); step skipped");
        }
        state.step += 1;
        state.images_seen += (t.batch_size * t.grad_accum) as u64;
        state.last_loss = loss_sum;
        state.elapsed_s = elapsed_before + start.elapsed().as_secs_f64();
        recent.push(loss_sum);
        if recent.len() > 100 {
            recent.remove(0);
        }

        let done_now = state.step - first_step;
        let rate = (done_now * (t.batch_size * t.grad_accum) as u64) as f64 / start.elapsed().as_secs_f64().max(1e-9);
        if state.step % t.log_every == 0 || state.step == t.steps {
            let rec = StepRecord { step: state.step, loss: loss_sum, lr, grad_norm, images_per_s: rate, elapsed_s: state.elapsed_s };
            metrics.write(&rec).map_err(|e| TrainError::io(metrics.path(), e))?;
            progress.update(state.step, &format!("loss {loss_sum:.4} lr {lr:.2e} {rate:.0} img/s"));
        }
        let stop = opts.stop.load(Ordering::SeqCst);
        let last = state.step == t.steps || stop;
        if t.sample_every > 0 && state.step % t.sample_every == 0 && !last {
            last_grid = Some(write_samples(&model, &run_dir, state.step)?);
        }
        if last || (t.checkpoint_every > 0 && state.step % t.checkpoint_every == 0) {
            last_checkpoint = Some(checkpoint::save(&run_dir, &model, &opt, &state, t.keep_checkpoints)?);
        }
        if stop {
            stopped_because = format!("interrupted at step {} (checkpoint written)", state.step);
            break;
        }
    }
    progress.finish();
    if state.step == t.steps && !opts.stop.load(Ordering::SeqCst) {
        last_grid = Some(write_samples(&model, &run_dir, state.step)?);
    }
    let run_images = state.images_seen.saturating_sub(first_step * (t.batch_size * t.grad_accum) as u64);
    let summary = TrainSummary {
        run_dir: run_dir.clone(),
        final_step: state.step,
        steps_planned: t.steps,
        stopped_because,
        final_loss: state.last_loss,
        mean_loss_last_100: if recent.is_empty() { f64::NAN } else { recent.iter().sum::<f64>() / recent.len() as f64 },
        skipped_steps: skipped,
        wall_time_s: start.elapsed().as_secs_f64(),
        images_per_s: run_images as f64 / start.elapsed().as_secs_f64().max(1e-9),
        device: device::describe(device),
        threads: device::resolve_threads(t.threads),
        parameters: model.parameter_count(),
        train_images: split.train.len(),
        val_images: split.val.len(),
        skipped_files: set.skipped.len(),
        checkpoint: last_checkpoint,
        sample_grid: last_grid,
        weights_checksum: model.checksum(),
    };
    let json = serde_json::to_vec_pretty(&summary).map_err(|e| TrainError::Other(e.to_string()))?;
    difforge_core::write_atomic(&run_dir.join("summary.json"), &json).map_err(|e| TrainError::io(run_dir.join("summary.json"), e))?;
    Ok(summary)
}

/// The device a config asks for (for commands that load a checkpoint).
pub fn device_for(device: &str, threads: usize) -> Result<Device, TrainError> {
    device::prepare(device, threads, crate::config::Precision::Fp32).map_err(TrainError::Config)
}
