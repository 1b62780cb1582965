//! Throughput benchmarks (`difforge bench`): the trainer's own optimiser step ([`Stepper`]) and
//! the sampling loop, timed on synthetic data, with the network's FLOPs counted analytically
//! (by the network itself) so that the achieved rate can be put against a card's peak (model
//! FLOPs utilisation).
//!
//! `tools/bench_torch.py` runs the identical network ("ref6m") in PyTorch and prints the same
//! field names, and `tools/bench.sh` puts the two side by side.

use crate::error::TrainError;
use crate::graph_step::StepGraphs;
use crate::lr::learning_rate;
use crate::step::{PhaseTimes, StepData, Stepper};
use difforge_config::RunConfig;
use difforge_core::{rng_for, Stream};
use difforge_data::Batch;
use difforge_diffusion::{SamplerConfig, SamplerKind};
use difforge_model::generate::{classes_in_turn, generate};
use difforge_model::{device, ConditionKind, DiffusionModel, GenerateSpec, Weights};
use difforge_nn::{AdamW, AdamWConfig, FlatBuffer};
use rand::Rng;
use serde::Serialize;
use std::time::Instant;
use tch::Device;

/// What to measure; the device, threads and precision come from the config's `[train]`.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// A label for the report (preset name or config path).
    pub model_name: String,
    /// Images per micro-batch (the config's `train.grad_accum` micro-batches make one step).
    pub batch: usize,
    /// Timed optimiser steps.
    pub steps: usize,
    /// Untimed optimiser steps first (also one short untimed sampling run when > 0).
    pub warmup: usize,
    /// Images generated at once in the sampling measurement.
    pub sample_batch: usize,
    /// DDIM steps of the sampling measurement.
    pub sample_steps: usize,
    /// The card's peak dense TFLOP/s for the precision used, for the utilisation figure.
    pub peak_tflops: Option<f64>,
    /// Time each phase of the timed training steps.
    pub profile: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub engine: String,
    pub model: String,
    pub device: String,
    pub threads: usize,
    pub precision: String,
    /// True when the forward pass runs under bf16 autocast (bf16 on CUDA only).
    pub autocast_bf16: bool,
    /// The network got channels_last (NHWC) images.
    pub channels_last: bool,
    /// What became of the training step's CUDA graph: "off", "captured" or "failed" (then the
    /// step ran eagerly; the log says why).
    pub cuda_graphs: String,
    pub parameters: i64,
    pub image_size: i64,
    pub channels: i64,
    pub batch: usize,
    pub grad_accum: usize,
    pub warmup_steps: usize,
    pub timed_steps: usize,
    /// Mean wall time of one optimiser step (batch x grad_accum images).
    pub train_step_s: f64,
    pub train_step_min_s: f64,
    pub train_step_max_s: f64,
    pub train_images_per_s: f64,
    /// Mean seconds per step in each phase (with `profile`).
    pub train_phases: Option<PhaseTimes>,
    pub final_loss: f64,
    /// FLOPs of one forward pass for one image (multiply-adds count 2; norms, activations and
    /// element-wise ops are left out).
    pub flops_per_image_forward: f64,
    /// 3 x forward (the backward pass costs about twice the forward).
    pub flops_per_image_train: f64,
    pub train_tflops: f64,
    pub sample_batch: usize,
    pub sample_steps: usize,
    pub sampler: String,
    pub guidance: f64,
    pub sample_s: f64,
    pub sample_images_per_s: f64,
    pub sample_tflops: f64,
    pub peak_tflops: Option<f64>,
    /// Achieved training TFLOP/s over `peak_tflops` (only when a peak was given).
    pub mfu: Option<f64>,
    /// Sampling TFLOP/s over `peak_tflops`.
    pub sample_mfu: Option<f64>,
    pub peak_memory_bytes: Option<u64>,
    pub peak_memory_source: String,
    pub notes: Vec<String>,
}

/// The process's peak resident set (VmHWM) in bytes, on Linux.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

fn synchronize(dev: Device) {
    if let Device::Cuda(n) = dev {
        tch::Cuda::synchronize(n as i64);
    }
}

/// A batch of uniform random images in [-1, 1] with random labels (or none).
fn synthetic_batch(model: &DiffusionModel, size: usize) -> Batch {
    let [c, s, _] = model.family().pixel_shape();
    let (c, s) = (c as usize, s as usize);
    let mut rng = rng_for(model.config().seed, Stream::Augment, u64::MAX);
    let images = (0..size * c * s * s).map(|_| rng.random_range(-1.0f32..=1.0)).collect();
    let labels = (0..size)
        .map(|_| match model.family().condition_kind() {
            ConditionKind::Classes(k) => rng.random_range(0..k),
            ConditionKind::Nothing | ConditionKind::Text => -1,
        })
        .collect();
    Batch::new(images, labels, vec![None; size], c, s, s)
}

/// Times `opts.steps` training steps and one sampling run of the model `cfg` describes.
pub fn bench(cfg: &RunConfig, opts: &BenchOptions) -> Result<BenchReport, TrainError> {
    if opts.batch == 0 || opts.steps == 0 || opts.sample_batch == 0 {
        return Err(difforge_core::ConfigError::problem("--batch", "bench: batch, steps and sample batch must be at least 1").into());
    }
    let mut cfg = cfg.clone();
    cfg.train.batch_size = opts.batch;
    cfg.validate()?;
    let sampler = SamplerConfig { sampler: SamplerKind::ddim(), steps: opts.sample_steps, eta: 0.0, guidance: 1.0, ..cfg.sample.clone() };
    sampler.validate(cfg.diffusion.timesteps).map_err(|e| e.rename_key(|k| (k == "sample.steps").then_some("--sample-steps")))?;

    let dev = device::prepare(&device::DeviceSettings::of_run(&cfg.train))?;
    device::reset_cuda_peak_memory(dev);
    let model = DiffusionModel::new(&cfg, dev)?;
    let t = &cfg.train;
    let (trainable, ema_params) = model.trainable();
    let opt = AdamW::new(trainable, AdamWConfig { beta1: t.adam_beta1, beta2: t.adam_beta2, eps: t.adam_eps, weight_decay: t.weight_decay })?;
    let ema_params = FlatBuffer::adopt(&ema_params)?;
    let fixed = synthetic_batch(&model, opts.batch);
    let graphs = StepGraphs::for_run(&cfg, dev);
    let mut stepper = Stepper { model, opt, ema_params, phases: None, graphs };
    // The trainer's own step on one fixed batch: no data loading, no prior images.
    let run = |stepper: &mut Stepper, step: u64| {
        let mut batch = |_draw: u64| Ok(fixed.clone());
        stepper
            .step(t, step, learning_rate(t, step), StepData { batch: &mut batch, rank_local: false, prior: None, inject_nan: false, parallel: None })
            .map(|o| o.loss)
    };
    for s in 0..opts.warmup {
        run(&mut stepper, s as u64)?;
    }
    synchronize(dev);
    stepper.phases = opts.profile.then(PhaseTimes::default);
    let mut times = Vec::with_capacity(opts.steps);
    let mut final_loss = f64::NAN;
    let start = Instant::now();
    for s in 0..opts.steps {
        let t0 = Instant::now();
        final_loss = run(&mut stepper, (opts.warmup + s) as u64)?;
        times.push(t0.elapsed().as_secs_f64());
    }
    synchronize(dev);
    let train_wall = start.elapsed().as_secs_f64();
    let train_peak = peak_rss_bytes();

    // Sampling: DDIM with guidance 1 (one forward per step, no doubled batch), EMA weights.
    let model = &stepper.model;
    let conditions = classes_in_turn(model.family().condition_kind(), opts.sample_batch);
    let seeds: Vec<u64> = (0..opts.sample_batch as u64).collect();
    if opts.warmup > 0 {
        let short = SamplerConfig { steps: opts.sample_steps.min(2), ..sampler.clone() };
        let spec = GenerateSpec {
            conditions: conditions.clone(),
            seeds: seeds.clone(),
            sampler: &short,
            weights: Weights::Ema,
            max_batch: opts.sample_batch,
            fixed_batch: false,
            negatives: Vec::new(),
            size: None,
        };
        let _warm = generate(model, &spec)?;
    }
    let spec = GenerateSpec {
        conditions,
        seeds,
        sampler: &sampler,
        weights: Weights::Ema,
        max_batch: opts.sample_batch,
        fixed_batch: false,
        negatives: Vec::new(),
        size: None,
    };
    synchronize(dev);
    let start = Instant::now();
    let _images = generate(model, &spec)?;
    synchronize(dev);
    let sample_s = start.elapsed().as_secs_f64();

    let per_step = (opts.batch * cfg.train.grad_accum) as f64;
    let train_step_s = train_wall / opts.steps as f64;
    let train_images_per_s = per_step / train_step_s;
    let fwd = model.network(Weights::Raw).flops_per_sample().unwrap_or(f64::NAN);
    let train_tflops = 3.0 * fwd * train_images_per_s / 1e12;
    let sample_images_per_s = opts.sample_batch as f64 / sample_s;
    let sample_tflops = fwd * opts.sample_steps as f64 * sample_images_per_s / 1e12;
    let peak = opts.peak_tflops.filter(|p| *p > 0.0);

    let mut notes = vec![
        "training step = the trainer's own step (noise and timesteps drawn on the host, forward, weighted MSE, backward, global-norm clip, AdamW, EMA) on one synthetic batch of uniform random images; no data loading".to_string(),
        format!("sampling = DDIM {} steps, eta 0, guidance 1.0 (one forward per step: no classifier-free guidance doubling), EMA weights, noise drawn on the host per image, result copied to the CPU", opts.sample_steps),
        "FLOPs counted analytically from the model config: convolutions, linears and attention matmuls (multiply-add = 2); norms, activations and element-wise ops not counted; training = 3 x forward".to_string(),
    ];
    let (peak_memory_bytes, peak_memory_source) = if dev.is_cuda() {
        // Both phases: the allocator's peak was reset once, before the model was built.
        let peak = device::cuda_peak_memory(dev);
        if let Some((_, reserved)) = peak {
            notes.push(format!("the CUDA caching allocator reserved at most {:.1} MiB", reserved as f64 / (1024.0 * 1024.0)));
        }
        (peak.map(|(allocated, _)| allocated), "torch.cuda.max_memory_allocated's number: tensors only, not the process".to_string())
    } else {
        let both = match (train_peak, peak_rss_bytes()) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        (both, "VmHWM: peak resident set of the whole process (libtorch included)".to_string())
    };
    Ok(BenchReport {
        engine: "difforge".into(),
        model: opts.model_name.clone(),
        device: device::describe(dev),
        threads: tch::get_num_threads().max(1) as usize,
        precision: cfg.train.precision.name().into(),
        autocast_bf16: model.autocast(),
        channels_last: cfg.train.channels_last,
        cuda_graphs: stepper.graphs.state().into(),
        parameters: model.parameter_count(),
        image_size: model.family().pixel_shape()[1],
        channels: model.family().pixel_shape()[0],
        batch: opts.batch,
        grad_accum: cfg.train.grad_accum,
        warmup_steps: opts.warmup,
        timed_steps: opts.steps,
        train_step_s,
        train_step_min_s: times.iter().copied().fold(f64::INFINITY, f64::min),
        train_step_max_s: times.iter().copied().fold(0.0, f64::max),
        train_images_per_s,
        train_phases: stepper.phases.map(|p| p.per_step()),
        final_loss,
        flops_per_image_forward: fwd,
        flops_per_image_train: 3.0 * fwd,
        train_tflops,
        sample_batch: opts.sample_batch,
        sample_steps: opts.sample_steps,
        sampler: "ddim".into(),
        guidance: 1.0,
        sample_s,
        sample_images_per_s,
        sample_tflops,
        peak_tflops: peak,
        mfu: peak.map(|p| train_tflops / p),
        sample_mfu: peak.map(|p| sample_tflops / p),
        peak_memory_bytes,
        peak_memory_source,
        notes,
    })
}
