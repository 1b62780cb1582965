//! The `[train]` section: how long and how fast to train, validation and early stopping,
//! checkpoints, fault tolerance, evaluation during training and where metrics are logged.

use crate::device::DeviceChoice;
use difforge_core::{check_range, ConfigError};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

difforge_core::choice! {
    /// What CUDA matmuls and convolutions compute in.
    pub enum Precision {
        /// Full float32 (TF32 off).
        Fp32 = "fp32",
        /// float32 storage, TF32 tensor-core matmuls and convolutions on CUDA.
        Tf32 = "tf32",
        /// bfloat16 autocast (CUDA and CPU) with float32 master weights, optimiser and loss.
        Bf16 = "bf16",
    }
}

difforge_core::choice! {
    /// Which CPU kernels libtorch runs, which decides the last bits of every result.
    pub enum CpuKernels {
        /// The AVX2 code paths of ATen, oneDNN and MKL on every x86-64 machine (pinned before
        /// libtorch starts), so that the same config, seed, libtorch and thread count give the
        /// same bytes on any of them.
        Portable = "portable",
        /// The fastest code paths this machine has (AVX-512 where present): results identical run
        /// to run on one machine, not across machines.
        Native = "native",
    }
}

difforge_core::choice! {
    /// The collectives library of a multi-process run (torchrun, SLURM, `difforge launch`).
    pub enum DistBackend {
        /// NCCL on CUDA devices, Gloo on the CPU.
        Auto = "auto",
        /// Gloo over TCP (CPU tensors).
        Gloo = "gloo",
        /// NCCL (CUDA tensors, one GPU per process).
        Nccl = "nccl",
    }
}

difforge_core::choice! {
    /// The learning rate after warm-up.
    pub enum LrSchedule {
        Constant = "constant",
        Cosine = "cosine",
    }
}

difforge_core::choice! {
    /// Whether lower or higher values of a metric are better.
    pub enum MetricMode {
        Min = "min",
        Max = "max",
    }
}

difforge_core::choice! {
    /// Where training metrics are written.
    pub enum LogTarget {
        /// metrics.jsonl, validation.jsonl and eval.jsonl in the run folder (always written).
        Jsonl = "jsonl",
        /// TensorBoard event files in the run folder.
        Tensorboard = "tensorboard",
    }
}

impl MetricMode {
    /// Whether `value` beats `best` by more than `min_delta`.
    pub fn improves(self, value: f64, best: f64, min_delta: f64) -> bool {
        match self {
            MetricMode::Min => value < best - min_delta,
            MetricMode::Max => value > best + min_delta,
        }
    }
}

/// The sample-quality metrics the evaluation during training reports (fid only with Inception
/// weights, class_accuracy only with a classifier), and whether higher is better. Early stopping
/// may watch any of them as `eval.NAME`.
pub const EVAL_METRICS: [(&str, bool); 9] = [
    ("fd_effnet", false),
    ("fid", false),
    ("kid", false),
    ("precision", true),
    ("recall", true),
    ("f1", true),
    ("density", true),
    ("coverage", true),
    ("class_accuracy", true),
];

/// For `eval.NAME`: NAME and whether higher is better, if NAME is an evaluation metric.
pub fn eval_metric(early_stop_metric: &str) -> Option<(&'static str, bool)> {
    let name = early_stop_metric.strip_prefix("eval.")?;
    EVAL_METRICS.iter().find(|(m, _)| *m == name).copied()
}

/// The `[train]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Optimiser steps to train.
    pub steps: u64,
    /// Images per micro-batch.
    pub batch_size: usize,
    /// Micro-batches accumulated per optimiser step.
    pub grad_accum: usize,
    /// Peak learning rate (AdamW).
    pub lr: f64,
    /// Linear warm-up steps from 0 to `lr`.
    pub warmup_steps: u64,
    /// After warm-up: "cosine" (down to lr * min_lr_ratio) or "constant".
    pub lr_schedule: LrSchedule,
    pub min_lr_ratio: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    /// Decoupled weight decay (AdamW).
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value; 0 disables.
    pub grad_clip: f64,
    /// EMA decay of the weights; the effective decay warms up as min(decay, (1+n)/(10+n)).
    pub ema_decay: f64,
    /// Write a checkpoint every N steps (and always at the end); 0: only at the end.
    pub checkpoint_every: u64,
    /// Checkpoints to keep (the newest ones).
    pub keep_checkpoints: usize,
    /// Write a sample grid every N steps (and at the end); 0: only at the end.
    pub sample_every: u64,
    /// Images per class in the sample grids (per preview prompt for text models, which may call
    /// it `sample_per_prompt`; times 8 for unconditional models).
    #[serde(alias = "sample_per_prompt")]
    pub sample_per_class: usize,
    /// Append a metrics record every N steps.
    pub log_every: u64,
    /// "auto" (CUDA when present), "cpu", "cuda" or "cuda:N".
    pub device: String,
    /// CPU threads for libtorch; 0 means one per core.
    pub threads: usize,
    /// "fp32", "tf32" or "bf16": what matmuls and convolutions compute in (bf16: autocast, on
    /// CUDA and the CPU).
    pub precision: Precision,
    /// Feed the network its images (and so its activations) in channels_last (NHWC) memory
    /// layout, which tensor-core convolutions prefer; the weights stay in their flat buffers.
    pub channels_last: bool,
    /// CUDA only: capture a micro-batch's forward pass, loss and backward pass in a CUDA graph
    /// once and replay it for every later micro-batch of the same shapes (one launch instead of
    /// hundreds of kernel launches); a micro-batch the graph does not fit, or a capture that
    /// fails or disagrees with the eager step, runs eagerly.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cuda_graphs: bool,
    /// Assemble the next batch of an in-memory set on a thread of its own while the step runs
    /// (the same batches: training is bit-identical either way).
    pub prefetch: bool,
    /// "portable" (the same bytes on any x86-64 machine) or "native" (this machine's fastest
    /// kernels); see the README's reproducibility section.
    pub cpu_kernels: CpuKernels,
    /// Multi-process runs only: "auto" (NCCL on CUDA, Gloo on the CPU), "gloo" or "nccl".
    pub dist_backend: DistBackend,
    /// Multi-process runs only: a rank that dies or hangs ends every process with an error
    /// naming it within this many seconds (meeting at start, each collective, each wait while
    /// rank 0 writes checkpoints or runs the sample evaluation: keep it above the longest).
    pub dist_timeout_s: u64,
    /// Evaluate the validation loss every N steps (and at the end); 0 turns validation off.
    pub val_every: u64,
    /// At most this many validation images are used.
    pub val_images: usize,
    /// Timesteps evaluated per validation image.
    pub val_repeats: usize,
    /// Timestep bands the validation loss is also reported in.
    pub val_bands: usize,
    /// Stop after this many validations without improvement; 0 turns early stopping off.
    pub early_stop_patience: u32,
    /// The smallest change that counts as an improvement.
    pub early_stop_min_delta: f64,
    /// The watched metric: "val_loss_ema", "val_loss" (raw weights), or a sample-quality metric
    /// of the evaluation every `eval_every` steps: "eval.fd_effnet", "eval.fid", "eval.kid",
    /// "eval.precision", "eval.recall", "eval.f1", "eval.density", "eval.coverage",
    /// "eval.class_accuracy" (set early_stop_mode = "max" for the last six).
    pub early_stop_metric: String,
    /// "min" (lower is better) or "max".
    pub early_stop_mode: MetricMode,
    /// Never stop early before this step.
    pub early_stop_min_steps: u64,
    /// Evaluate sample quality (FD-EffNet, KID, precision/recall, ..., as `difforge eval`) every
    /// N steps and at the end, into eval.jsonl; 0 turns it off. Costs eval_samples samples and
    /// their features each time.
    pub eval_every: u64,
    /// Samples generated per evaluation (the same seeds every time).
    pub eval_samples: usize,
    /// A `difforge classifier train` folder: adds class accuracy to the evaluation.
    pub eval_classifier: Option<PathBuf>,
    /// pytorch-fid's Inception weights: adds FID to the evaluation.
    pub eval_inception_weights: Option<PathBuf>,
    /// Consecutive non-finite steps that trigger a rollback to the last good checkpoint.
    pub max_bad_steps: u32,
    /// The learning rate is multiplied by this factor at each rollback.
    pub rollback_lr_factor: f64,
    /// Rollbacks allowed before the run stops with a report.
    pub max_rollbacks: u32,
    /// A loss this many standard deviations above the recent mean is logged as a spike; 0: off.
    pub spike_zscore: f64,
    /// For tests: steps whose loss is replaced by NaN (once each).
    pub debug_nan_steps: Vec<u64>,
    /// Where metrics go besides the console: "jsonl" (metrics.jsonl, validation.jsonl and
    /// eval.jsonl, always written) and "tensorboard" (event files for `tensorboard --logdir`).
    pub log: Vec<LogTarget>,
    /// Stable Diffusion full fine-tunes: how the trained model is written at the end: "diffusers"
    /// (`RUN/diffusers/`, the base folder with the trained UNet) and/or "single-file"
    /// (`RUN/model.safetensors`, the original layout the webui and ComfyUI load).
    #[serde(skip_serializing_if = "is_default_export")]
    pub export: Vec<ExportFormat>,
}

difforge_core::choice! {
    /// A format a full fine-tune of Stable Diffusion is written in.
    pub enum ExportFormat {
        Diffusers = "diffusers",
        SingleFile = "single-file",
    }
}

fn is_default_export(formats: &[ExportFormat]) -> bool {
    formats == [ExportFormat::Diffusers]
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 10_000,
            batch_size: 64,
            grad_accum: 1,
            lr: 2e-4,
            warmup_steps: 200,
            lr_schedule: LrSchedule::Cosine,
            min_lr_ratio: 0.1,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            weight_decay: 0.0,
            grad_clip: 1.0,
            ema_decay: 0.999,
            checkpoint_every: 1000,
            keep_checkpoints: 3,
            sample_every: 1000,
            sample_per_class: 8,
            log_every: 10,
            device: "auto".into(),
            threads: 0,
            precision: Precision::Tf32,
            channels_last: false,
            cuda_graphs: false,
            prefetch: true,
            cpu_kernels: CpuKernels::Portable,
            dist_backend: DistBackend::Auto,
            dist_timeout_s: 600,
            val_every: 500,
            val_images: 500,
            val_repeats: 2,
            val_bands: 10,
            early_stop_patience: 0,
            early_stop_min_delta: 0.0,
            early_stop_metric: "val_loss_ema".into(),
            early_stop_mode: MetricMode::Min,
            early_stop_min_steps: 0,
            eval_every: 0,
            eval_samples: 200,
            eval_classifier: None,
            eval_inception_weights: None,
            max_bad_steps: 5,
            rollback_lr_factor: 0.5,
            max_rollbacks: 3,
            spike_zscore: 6.0,
            debug_nan_steps: Vec::new(),
            log: vec![LogTarget::Jsonl],
            export: vec![ExportFormat::Diffusers],
        }
    }
}

impl TrainConfig {
    /// The watched metric exists, is computed (validation or evaluation on), and its mode fits.
    fn validate_early_stop_metric(&self) -> Result<(), ConfigError> {
        let metric = self.early_stop_metric.as_str();
        if metric == "val_loss_ema" || metric == "val_loss" {
            if self.early_stop_patience > 0 && self.val_every == 0 {
                return Err(ConfigError::problem("train.early_stop_patience", "needs validation: set train.val_every > 0"));
            }
            return Ok(());
        }
        let Some((_, higher_is_better)) = eval_metric(metric) else {
            let names: Vec<String> = EVAL_METRICS.iter().map(|(m, _)| format!("eval.{m}")).collect();
            let mut all = vec!["val_loss_ema", "val_loss"];
            all.extend(names.iter().map(String::as_str));
            return Err(ConfigError::new("train.early_stop_metric", format!("\"{metric}\""), difforge_core::one_of(&all)));
        };
        if self.eval_every == 0 {
            return Err(ConfigError::new(
                "train.early_stop_metric",
                format!("\"{metric}\""),
                "a metric that is computed: this one needs the evaluation, set train.eval_every > 0",
            ));
        }
        let wanted = if higher_is_better { MetricMode::Max } else { MetricMode::Min };
        if self.early_stop_mode != wanted {
            return Err(ConfigError::new(
                "train.early_stop_mode",
                format!("\"{}\"", self.early_stop_mode),
                format!("\"{}\": {metric} is better when {}", wanted, if higher_is_better { "higher" } else { "lower" }),
            ));
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let at_least_one = [
            ("train.steps", self.steps),
            ("train.batch_size", self.batch_size as u64),
            ("train.grad_accum", self.grad_accum as u64),
            ("train.log_every", self.log_every),
            ("train.keep_checkpoints", self.keep_checkpoints as u64),
            ("train.sample_per_class", self.sample_per_class as u64),
            ("train.val_bands", self.val_bands as u64),
            ("train.val_repeats", self.val_repeats as u64),
            ("train.max_bad_steps", u64::from(self.max_bad_steps)),
            ("train.dist_timeout_s", self.dist_timeout_s),
        ];
        for (key, v) in at_least_one {
            if v < 1 {
                return Err(ConfigError::new(key, v, "at least 1"));
            }
        }
        for (key, v, max) in [
            ("train.steps", self.steps, 1_000_000_000),
            ("train.batch_size", self.batch_size as u64, 65_536),
            ("train.grad_accum", self.grad_accum as u64, 65_536),
            ("train.sample_per_class", self.sample_per_class as u64, 1_000),
            ("train.val_images", self.val_images as u64, 1_000_000),
            ("train.val_repeats", self.val_repeats as u64, 1_000),
            ("train.val_bands", self.val_bands as u64, 1_000),
            ("train.eval_samples", self.eval_samples as u64, 50_000),
            ("train.threads", self.threads as u64, 1_024),
        ] {
            if v > max {
                return Err(ConfigError::new(key, v, format!("at most {max}")));
            }
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr < 1.0) {
            return Err(ConfigError::new("train.lr", self.lr, "0 < lr < 1"));
        }
        check_range("train.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)?;
        for (key, v) in [("train.adam_beta1", self.adam_beta1), ("train.adam_beta2", self.adam_beta2), ("train.ema_decay", self.ema_decay)] {
            if !(v.is_finite() && (0.0..1.0).contains(&v)) {
                return Err(ConfigError::new(key, v, "0.0 <= x < 1.0"));
            }
        }
        if !(self.adam_eps.is_finite() && self.adam_eps > 0.0 && self.adam_eps < 1.0) {
            return Err(ConfigError::new("train.adam_eps", self.adam_eps, "0 < eps < 1"));
        }
        check_range("train.weight_decay", self.weight_decay, 0.0, 1.0)?;
        let formats: Vec<&str> = self.export.iter().map(|f| f.name()).collect();
        if self.export.is_empty() || (1..self.export.len()).any(|i| self.export[..i].contains(&self.export[i])) {
            return Err(ConfigError::new("train.export", format!("{formats:?}"), "one or both of \"diffusers\", \"single-file\", each once"));
        }
        check_range("train.grad_clip", self.grad_clip, 0.0, 1e9)?;
        check_range("train.spike_zscore", self.spike_zscore, 0.0, 1e9)?;
        check_range("train.early_stop_min_delta", self.early_stop_min_delta, 0.0, 1e9)?;
        self.validate_early_stop_metric()?;
        if !(self.rollback_lr_factor.is_finite() && self.rollback_lr_factor > 0.0 && self.rollback_lr_factor <= 1.0) {
            return Err(ConfigError::new("train.rollback_lr_factor", self.rollback_lr_factor, "0 < x <= 1"));
        }
        if self.eval_every > 0 && self.eval_samples < 2 {
            return Err(ConfigError::new("train.eval_samples", self.eval_samples, "at least 2 (a covariance needs two samples)"));
        }
        let device = DeviceChoice::parse("train.device", &self.device)?;
        if self.cuda_graphs && device == DeviceChoice::Cpu {
            return Err(ConfigError::new("train.cuda_graphs", true, "false on train.device = \"cpu\" (CUDA graphs replay GPU kernels)"));
        }
        Ok(())
    }

    /// Whether `target` is among the configured log sinks.
    pub fn logs_to(&self, target: LogTarget) -> bool {
        target == LogTarget::Jsonl || self.log.contains(&target)
    }
}
