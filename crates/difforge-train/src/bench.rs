//! Throughput benchmarks (`difforge bench`): the trainer's own optimiser step and the sampling
//! loop, timed on synthetic data, with the model's FLOPs counted analytically so that the
//! achieved rate can be put against a card's peak (model FLOPs utilisation).
//!
//! `tools/bench_torch.py` runs the identical network ("ref6m") in PyTorch and prints the same
//! field names, and `tools/bench.sh` puts the two side by side.

use crate::config::{Precision, RunConfig};
use crate::device;
use crate::ema;
use crate::error::TrainError;
use crate::generate::{generate, GenerateSpec};
use crate::lr::learning_rate;
use crate::model::DiffusionModel;
use crate::optimizer::{AdamW, AdamWConfig};
use crate::trainer::{loss_of, make_micro_batch};
use difforge_core::{derive_seed, rng_for, Stream};
use difforge_data::Batch;
use difforge_diffusion::{SamplerConfig, SamplerKind};
use difforge_nn::UNetConfig;
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

/// FLOPs of 3x3 / 1x1 convolutions and linears, multiply-adds counted as 2.
fn conv(cin: i64, cout: i64, k: i64, side: i64) -> f64 {
    2.0 * (cin * cout * k * k) as f64 * (side * side) as f64
}

fn linear(cin: i64, cout: i64, tokens: i64) -> f64 {
    2.0 * (cin * cout) as f64 * tokens as f64
}

/// A residual block from `cin` to `cout` channels at `side` x `side`.
fn resblock(c: &UNetConfig, cin: i64, cout: i64, side: i64) -> f64 {
    let emb_out = if c.scale_shift { 2 * cout } else { cout };
    let skip = if cin != cout { conv(cin, cout, 1, side) } else { 0.0 };
    conv(cin, cout, 3, side) + linear(c.embed_dim(), emb_out, 1) + conv(cout, cout, 3, side) + skip
}

/// Self-attention over `side` x `side` tokens of `ch` channels: q, k, v and out projections,
/// then QK^T and AV (2 x 2 N^2 C summed over the heads).
fn attention(ch: i64, side: i64) -> f64 {
    let n = side * side;
    4.0 * linear(ch, ch, n) + 2.0 * 2.0 * (n * n) as f64 * ch as f64
}

/// FLOPs of one forward pass of the UNet for one image, block by block as
/// `difforge_nn::UNet::new` builds it. The config must be resolved (channels and size known).
pub fn unet_forward_flops(c: &UNetConfig) -> f64 {
    let emb = c.embed_dim();
    let sides = c.level_sides();
    let levels = c.channel_mult.len();
    let size = c.image_size;
    // Time embedding MLP (the class embedding is a lookup).
    let mut f = linear(c.channels, emb, 1) + linear(emb, emb, 1);
    f += conv(c.in_channels, c.channels, 3, size);
    let mut skips = vec![c.channels];
    let mut ch = c.channels;
    for (i, &side) in sides.iter().enumerate() {
        let out = c.level_channels(i);
        for _ in 0..c.res_blocks {
            f += resblock(c, ch, out, side);
            if c.attention_resolutions.contains(&side) {
                f += attention(out, side);
            }
            ch = out;
            skips.push(ch);
        }
        if i + 1 < levels {
            // Stride-2 3x3 conv: its output is half the side.
            f += conv(ch, ch, 3, side / 2);
            skips.push(ch);
        }
    }
    let low = sides[levels - 1];
    f += 2.0 * resblock(c, ch, ch, low);
    if c.mid_attention {
        f += attention(ch, low);
    }
    for i in (0..levels).rev() {
        let out = c.level_channels(i);
        for _ in 0..=c.res_blocks {
            let skip = skips.pop().unwrap_or(0);
            f += resblock(c, ch + skip, out, sides[i]);
            if c.attention_resolutions.contains(&sides[i]) {
                f += attention(out, sides[i]);
            }
            ch = out;
        }
        if i > 0 {
            // Nearest x2, then a 3x3 conv at the doubled side.
            f += conv(ch, ch, 3, sides[i] * 2);
        }
    }
    f + conv(ch, c.out_channels, 3, size)
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
fn synthetic_batch(cfg: &RunConfig, size: usize) -> Batch {
    let (c, s) = (cfg.model.in_channels as usize, cfg.model.image_size as usize);
    let mut rng = rng_for(cfg.seed, Stream::Augment, u64::MAX);
    let images = (0..size * c * s * s).map(|_| rng.random_range(-1.0f32..=1.0)).collect();
    let labels = (0..size).map(|_| if cfg.model.num_classes > 0 { rng.random_range(0..cfg.model.num_classes) } else { -1 }).collect();
    Batch { images, labels, size, channels: c, side: s }
}

/// The trainer's step on one fixed synthetic batch.
struct Step<'a> {
    cfg: &'a RunConfig,
    model: &'a DiffusionModel,
    opt: AdamW,
    ema_params: Vec<tch::Tensor>,
    batch: Batch,
}

impl Step<'_> {
    /// `Trainer::step` without the data loader: zero_grad, forward and backward of each
    /// micro-batch, global-norm clipping, AdamW, EMA.
    fn run(&mut self, step: u64) -> f64 {
        let t = &self.cfg.train;
        tch::manual_seed((derive_seed(self.cfg.seed, Stream::Dropout, step) >> 1) as i64);
        self.opt.zero_grad();
        let mut loss_sum = 0.0;
        for micro in 0..t.grad_accum as u64 {
            let draw = step * t.grad_accum as u64 + micro;
            let mb = make_micro_batch(self.model, &self.batch, draw);
            let loss = loss_of(self.model, &mb) / t.grad_accum as f64;
            loss.backward();
            loss_sum += loss.double_value(&[]);
        }
        let grad_norm = self.opt.grad_norm();
        let lr = learning_rate(t, step);
        if loss_sum.is_finite() && grad_norm.is_finite() {
            if t.grad_clip > 0.0 && grad_norm > t.grad_clip {
                self.opt.scale_grads(t.grad_clip / (grad_norm + 1e-6));
            }
            self.opt.step(lr);
            ema::update(&self.ema_params, self.opt.params(), ema::ema_decay(t.ema_decay, self.opt.steps));
        }
        loss_sum
    }
}

fn precision_name(p: Precision) -> &'static str {
    match p {
        Precision::Fp32 => "fp32",
        Precision::Tf32 => "tf32",
        Precision::Bf16 => "bf16",
    }
}

/// Times `opts.steps` training steps and one sampling run of the model `cfg` describes.
pub fn bench(cfg: &RunConfig, opts: &BenchOptions) -> Result<BenchReport, TrainError> {
    if opts.batch == 0 || opts.steps == 0 || opts.sample_batch == 0 {
        return Err(TrainError::Config("bench: batch, steps and sample batch must be at least 1".into()));
    }
    let mut cfg = cfg.clone();
    cfg.train.batch_size = opts.batch;
    cfg.validate().map_err(TrainError::Config)?;
    let sampler = SamplerConfig { sampler: SamplerKind::Ddim, steps: opts.sample_steps, eta: 0.0, guidance: 1.0, ..cfg.sample.clone() };
    sampler.validate(cfg.diffusion.timesteps).map_err(|e| TrainError::Config(e.replace("sample.steps", "sample steps")))?;

    let dev = device::prepare(&cfg.train.device, cfg.train.threads, cfg.train.precision).map_err(TrainError::Config)?;
    let model = DiffusionModel::new(&cfg, dev)?;
    let t = &cfg.train;
    let opt = AdamW::new(model.parameters(), AdamWConfig { beta1: t.adam_beta1, beta2: t.adam_beta2, eps: t.adam_eps, weight_decay: t.weight_decay });
    let mut step = Step { cfg: &cfg, model: &model, opt, ema_params: model.ema_parameters(), batch: synthetic_batch(&cfg, opts.batch) };

    for s in 0..opts.warmup {
        step.run(s as u64);
    }
    synchronize(dev);
    let mut times = Vec::with_capacity(opts.steps);
    let mut final_loss = f64::NAN;
    let start = Instant::now();
    for s in 0..opts.steps {
        let t0 = Instant::now();
        final_loss = step.run((opts.warmup + s) as u64);
        times.push(t0.elapsed().as_secs_f64());
    }
    synchronize(dev);
    let train_wall = start.elapsed().as_secs_f64();
    let train_peak = peak_rss_bytes();

    // Sampling: DDIM with guidance 1 (one forward per step, no doubled batch), EMA weights.
    let classes = (cfg.model.num_classes > 0).then(|| (0..opts.sample_batch as i64).map(|k| k % cfg.model.num_classes).collect::<Vec<_>>());
    let seeds: Vec<u64> = (0..opts.sample_batch as u64).collect();
    if opts.warmup > 0 {
        let short = SamplerConfig { steps: opts.sample_steps.min(2), ..sampler.clone() };
        let spec =
            GenerateSpec { classes: classes.clone(), seeds: seeds.clone(), sampler: &short, use_ema: true, max_batch: opts.sample_batch, fixed_batch: false };
        let _ = generate(&model, &spec);
    }
    let spec = GenerateSpec { classes, seeds, sampler: &sampler, use_ema: true, max_batch: opts.sample_batch, fixed_batch: false };
    synchronize(dev);
    let start = Instant::now();
    let images = generate(&model, &spec);
    synchronize(dev);
    let sample_s = start.elapsed().as_secs_f64();
    debug_assert_eq!(images.size()[0], opts.sample_batch as i64);

    let per_step = (opts.batch * cfg.train.grad_accum) as f64;
    let train_step_s = train_wall / opts.steps as f64;
    let train_images_per_s = per_step / train_step_s;
    let fwd = unet_forward_flops(&cfg.model);
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
        notes.push("peak GPU memory is not reported: tch 0.24 exposes no CUDA memory statistics".into());
        (None, "not available on CUDA (tch exposes no allocator statistics)".to_string())
    } else {
        let both = match (train_peak, peak_rss_bytes()) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        (both, "VmHWM: peak resident set of the whole process (libtorch included)".to_string())
    };
    if dev.is_cuda() && cfg.train.precision != Precision::Bf16 {
        notes.push("tch exposes no TF32 switches: fp32 and tf32 both run with libtorch's defaults (cuDNN convolutions may use TF32, matmuls do not)".into());
    }
    if !dev.is_cuda() && cfg.train.precision == Precision::Bf16 {
        notes.push("bf16 autocast applies on CUDA only: this CPU run is float32".into());
    }
    Ok(BenchReport {
        engine: "difforge".into(),
        model: opts.model_name.clone(),
        device: device::describe(dev),
        threads: tch::get_num_threads().max(1) as usize,
        precision: precision_name(cfg.train.precision).into(),
        autocast_bf16: model.autocast(),
        parameters: model.parameter_count(),
        image_size: cfg.model.image_size,
        channels: cfg.model.in_channels,
        batch: opts.batch,
        grad_accum: cfg.train.grad_accum,
        warmup_steps: opts.warmup,
        timed_steps: opts.steps,
        train_step_s,
        train_step_min_s: times.iter().copied().fold(f64::INFINITY, f64::min),
        train_step_max_s: times.iter().copied().fold(0.0, f64::max),
        train_images_per_s,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// One level of 8 channels at 4x4, one residual block, no attention, additive conditioning,
    /// one input and output channel.
    fn one_level() -> UNetConfig {
        UNetConfig {
            channels: 8,
            channel_mult: vec![1],
            res_blocks: 1,
            attention_resolutions: vec![],
            mid_attention: false,
            scale_shift: false,
            heads: 1,
            groups: 4,
            in_channels: 1,
            out_channels: 1,
            image_size: 4,
            ..Default::default()
        }
    }

    #[test]
    fn flops_of_a_one_level_unet_by_hand() {
        // Embedding width 32, 16 pixels.
        let time_mlp = 2 * (8 * 32 + 32 * 32); // 2,560
        let conv_in = 2 * 8 * 9 * 16; // 2,304
        let res_8_8 = 2 * 8 * 8 * 9 * 16 + 2 * 32 * 8 + 2 * 8 * 8 * 9 * 16; // 37,376
                                                                            // Up path: two blocks of 16 -> 8 channels (skip concatenated), with a 1x1 skip conv.
        let res_16_8 = 2 * 16 * 8 * 9 * 16 + 2 * 32 * 8 + 2 * 8 * 8 * 9 * 16 + 2 * 16 * 8 * 16; // 59,904
        let conv_out = 2 * 8 * 9 * 16; // 2,304
        let want = time_mlp + conv_in + res_8_8 + 2 * res_8_8 + 2 * res_16_8 + conv_out;
        assert_eq!(want, 239_104);
        assert_eq!(unet_forward_flops(&one_level()), want as f64);
    }

    #[test]
    fn attention_scale_shift_and_levels_add_what_they_should() {
        let base = unet_forward_flops(&one_level());
        // Middle attention at 4x4 with 8 channels: four 8x8 projections of 16 tokens, plus
        // QK^T and AV: 2 * 2 * 16^2 * 8.
        let with_attn = unet_forward_flops(&UNetConfig { mid_attention: true, ..one_level() });
        assert_eq!(with_attn - base, (4 * 2 * 8 * 8 * 16 + 2 * 2 * 256 * 8) as f64);
        // Scale-shift doubles each of the 5 blocks' embedding projections (32 -> 16, not 8).
        let ss = unet_forward_flops(&UNetConfig { scale_shift: true, ..one_level() });
        assert_eq!(ss - base, (5 * 2 * 32 * 8) as f64);
        // A second level at 2x2 with 16 channels: downsample 8->8 (2x2 output), down block
        // 8->16 at 2x2 (with 1x1 skip), the middle now at 16 channels 2x2, the up path of
        // level 1 (2 blocks, 32->16 and 24->16 with skips) and its upsample conv (16 at 4x4),
        // then level 0's up path taking 16+8, then 8+8 channels.
        let two = UNetConfig { channel_mult: vec![1, 2], ..one_level() };
        let cfg = &two;
        let want = (2 * (8 * 32 + 32 * 32)) as f64
            + conv(1, 8, 3, 4)
            + resblock(cfg, 8, 8, 4)
            + conv(8, 8, 3, 2)
            + resblock(cfg, 8, 16, 2)
            + 2.0 * resblock(cfg, 16, 16, 2)
            + resblock(cfg, 32, 16, 2)
            + resblock(cfg, 24, 16, 2)
            + conv(16, 16, 3, 4)
            + resblock(cfg, 24, 8, 4)
            + resblock(cfg, 16, 8, 4)
            + conv(8, 1, 3, 4);
        assert_eq!(unet_forward_flops(&two), want);
    }

    #[test]
    fn reference_preset_flops_match_pytorchs_flop_counter() {
        // torch.utils.flop_counter.FlopCounterMode on one forward of the reference UNet(64) at
        // batch 1 (tools/bench_torch.py prints it): 2,839,347,200.
        let mut c = UNetConfig::preset("ref6m").expect("preset");
        c.out_channels = 3;
        assert_eq!(unet_forward_flops(&c), 2_839_347_200.0);
    }
}
