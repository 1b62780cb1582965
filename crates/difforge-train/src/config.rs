//! The run config: one TOML file with sections [data], [model], [diffusion], [train] and
//! [sample]. Every field has a default; unknown keys are rejected; `--set a.b=value` overrides
//! any field; errors name the key and what was expected.

use crate::error::TrainError;
use difforge_data::DataConfig;
use difforge_diffusion::{DiffusionConfig, SamplerConfig};
use difforge_nn::{LoraConfig, UNetConfig};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::path::PathBuf;

/// The built-in default: the digits demo.
pub const DEFAULT_CONFIG: &str = include_str!("../../../configs/digits.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Full float32 (TF32 off).
    Fp32,
    /// float32 storage, TF32 tensor-core matmuls and convolutions on CUDA.
    Tf32,
    /// bfloat16 autocast on CUDA with float32 master weights and loss (float32 on CPU).
    Bf16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    Constant,
    Cosine,
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
    /// Images per class in the sample grids (or images in all, for unconditional models).
    pub sample_per_class: usize,
    /// Append a metrics record every N steps.
    pub log_every: u64,
    /// "auto" (CUDA when present), "cpu", "cuda" or "cuda:N".
    pub device: String,
    /// CPU threads for libtorch; 0 means one per core.
    pub threads: usize,
    /// "fp32", "tf32" or "bf16" (bf16 and tf32 apply on CUDA only).
    pub precision: Precision,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricMode {
    Min,
    Max,
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
        }
    }
}

impl TrainConfig {
    /// The watched metric exists, is computed (validation or evaluation on), and its mode fits.
    fn validate_early_stop_metric(&self) -> Result<(), String> {
        let metric = self.early_stop_metric.as_str();
        if metric == "val_loss_ema" || metric == "val_loss" {
            if self.early_stop_patience > 0 && self.val_every == 0 {
                return Err("train.early_stop_patience needs validation: set train.val_every > 0".into());
            }
            return Ok(());
        }
        let Some((_, higher_is_better)) = crate::evaluator::eval_metric(metric) else {
            let names: Vec<String> = crate::evaluator::METRICS.iter().map(|(m, _)| format!("\"eval.{m}\"")).collect();
            return Err(format!("train.early_stop_metric = \"{metric}\": expected \"val_loss_ema\", \"val_loss\" or one of {}", names.join(", ")));
        };
        if self.eval_every == 0 {
            return Err(format!("train.early_stop_metric = \"{metric}\" needs the evaluation: set train.eval_every > 0"));
        }
        let wanted = if higher_is_better { MetricMode::Max } else { MetricMode::Min };
        if self.early_stop_mode != wanted {
            return Err(format!(
                "train.early_stop_metric = \"{metric}\" is better when {}: set train.early_stop_mode = \"{}\"",
                if higher_is_better { "higher" } else { "lower" },
                if higher_is_better { "max" } else { "min" }
            ));
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("train.steps", self.steps as f64),
            ("train.batch_size", self.batch_size as f64),
            ("train.grad_accum", self.grad_accum as f64),
            ("train.log_every", self.log_every as f64),
            ("train.keep_checkpoints", self.keep_checkpoints as f64),
        ];
        for (key, v) in positive {
            if v < 1.0 {
                return Err(format!("{key} = {v}: expected at least 1"));
            }
        }
        if !(self.lr > 0.0 && self.lr < 1.0) {
            return Err(format!("train.lr = {}: expected 0 < lr < 1", self.lr));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(format!("train.min_lr_ratio = {}: expected 0.0..=1.0", self.min_lr_ratio));
        }
        for (key, v) in [("train.adam_beta1", self.adam_beta1), ("train.adam_beta2", self.adam_beta2), ("train.ema_decay", self.ema_decay)] {
            if !(0.0..1.0).contains(&v) {
                return Err(format!("{key} = {v}: expected 0.0 <= x < 1.0"));
            }
        }
        if self.adam_eps <= 0.0 || self.weight_decay < 0.0 || self.grad_clip < 0.0 {
            return Err("train.adam_eps must be > 0, train.weight_decay and train.grad_clip >= 0".into());
        }
        self.validate_early_stop_metric()?;
        if self.val_bands == 0 || self.val_repeats == 0 {
            return Err("train.val_bands and train.val_repeats must be at least 1".into());
        }
        if !(self.rollback_lr_factor > 0.0 && self.rollback_lr_factor <= 1.0) {
            return Err(format!("train.rollback_lr_factor = {}: expected 0 < x <= 1", self.rollback_lr_factor));
        }
        if self.max_bad_steps == 0 {
            return Err("train.max_bad_steps = 0: expected at least 1".into());
        }
        if self.eval_every > 0 && self.eval_samples < 2 {
            return Err(format!("train.eval_samples = {}: expected at least 2", self.eval_samples));
        }
        crate::device::parse_device(&self.device)?;
        Ok(())
    }
}

/// The `[finetune]` section: start from a trained checkpoint instead of from scratch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneConfig {
    /// A checkpoint folder or run folder whose EMA weights the run starts from.
    pub from: Option<PathBuf>,
    /// Mix samples generated by the base model into every step (DreamBooth's prior
    /// preservation), so the model keeps what it knew.
    pub prior_preservation: bool,
    /// Weight of the prior images' loss.
    pub prior_weight: f64,
    /// Prior images generated per class (or in all, for an unconditional base).
    pub prior_per_class: usize,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig { from: None, prior_preservation: false, prior_weight: 1.0, prior_per_class: 50 }
    }
}

/// The whole run config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// The one seed every random draw of the run derives from.
    pub seed: u64,
    pub data: DataConfig,
    pub model: UNetConfig,
    pub diffusion: DiffusionConfig,
    pub train: TrainConfig,
    pub sample: SamplerConfig,
    pub finetune: FinetuneConfig,
    /// LoRA adapters: when present, only the adapters train and the rest is frozen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
}

/// Parses a `--set key=value` value: TOML syntax when it parses (numbers, booleans, arrays,
/// quoted strings), otherwise a bare string.
fn parse_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// Applies `key.path=value` to a TOML table, creating sections as needed.
pub fn apply_set(table: &mut toml::Table, assignment: &str) -> Result<(), TrainError> {
    let (key, raw) = assignment.split_once('=').ok_or_else(|| TrainError::Config(format!("--set {assignment}: expected key=value, e.g. train.steps=200")))?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(TrainError::Config(format!("--set {assignment}: empty key segment")));
    }
    let mut node = table;
    for part in &parts[..parts.len() - 1] {
        let entry = node.entry(part.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
        node = entry.as_table_mut().ok_or_else(|| TrainError::Config(format!("--set {assignment}: `{part}` is a value, not a section")))?;
    }
    node.insert(parts[parts.len() - 1].to_string(), parse_value(raw.trim()));
    Ok(())
}

impl RunConfig {
    /// Reads a config (the built-in default when `path` is None), applies `--set` overrides,
    /// resolves derived fields and validates.
    pub fn load(path: Option<&Path>, sets: &[String]) -> Result<RunConfig, TrainError> {
        let (text, origin) = match path {
            Some(p) => (std::fs::read_to_string(p).map_err(|e| TrainError::Config(format!("cannot read {}: {e}", p.display())))?, p.display().to_string()),
            None => (DEFAULT_CONFIG.to_string(), "the built-in digits config".to_string()),
        };
        RunConfig::from_toml(&text, sets, &origin)
    }

    pub fn from_toml(text: &str, sets: &[String], origin: &str) -> Result<RunConfig, TrainError> {
        let mut table: toml::Table = text.parse().map_err(|e| TrainError::Config(format!("{origin}: {e}")))?;
        for s in sets {
            apply_set(&mut table, s)?;
        }
        let mut cfg: RunConfig = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            TrainError::Config(format!("{origin}: key `{key}`: {}", e.into_inner().message().trim()))
        })?;
        cfg.resolve();
        cfg.validate().map_err(TrainError::Config)?;
        Ok(cfg)
    }

    /// Fills the model fields that default to the data's.
    pub fn resolve(&mut self) {
        if self.model.in_channels == 0 {
            self.model.in_channels = i64::from(self.data.channels);
        }
        if self.model.out_channels == 0 {
            self.model.out_channels = self.model.in_channels;
        }
        if self.model.image_size == 0 {
            self.model.image_size = i64::from(self.data.image_size);
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        self.data.validate()?;
        self.model.validate()?;
        self.diffusion.validate()?;
        self.train.validate()?;
        self.sample.validate(self.diffusion.timesteps)?;
        if self.model.in_channels != i64::from(self.data.channels) {
            return Err(format!("model.in_channels = {} but data.channels = {}: they must agree", self.model.in_channels, self.data.channels));
        }
        if let Some(l) = &self.lora {
            l.validate()?;
            if self.finetune.from.is_none() {
                return Err("[lora] adapts a trained model: set finetune.from (or use `difforge finetune --from`)".into());
            }
        }
        if self.finetune.prior_preservation && self.finetune.from.is_none() {
            return Err("finetune.prior_preservation needs finetune.from".into());
        }
        if self.finetune.prior_weight < 0.0 || self.finetune.prior_per_class == 0 {
            return Err("finetune.prior_weight must be >= 0 and finetune.prior_per_class >= 1".into());
        }
        if self.model.image_size != i64::from(self.data.image_size) {
            return Err(format!("model.image_size = {} but data.image_size = {}: they must agree", self.model.image_size, self.data.image_size));
        }
        Ok(())
    }

    /// The effective config as TOML (what `config show` prints and a run folder keeps).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot serialise config: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, sets: &[&str]) -> Result<RunConfig, TrainError> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        RunConfig::from_toml(text, &sets, "test")
    }

    #[test]
    fn the_default_config_parses_and_round_trips() {
        let cfg = RunConfig::load(None, &[]).unwrap();
        let again = load(&cfg.to_toml(), &[]).unwrap();
        assert_eq!(cfg, again);
    }

    #[test]
    fn set_overrides_nested_keys_with_typed_values() {
        let cfg = load(DEFAULT_CONFIG, &["train.steps=200", "model.channel_mult=[1,2]", "sample.sampler=ddpm", "data.augment.hflip=0.5"]).unwrap();
        assert_eq!(cfg.train.steps, 200);
        assert_eq!(cfg.model.channel_mult, vec![1, 2]);
        assert_eq!(cfg.sample.sampler, difforge_diffusion::SamplerKind::Ddpm);
        assert_eq!(cfg.data.augment.hflip, 0.5);
    }

    #[test]
    fn errors_name_the_key() {
        let err = load("[train]\nstepz = 3\n", &[]).unwrap_err().to_string();
        assert!(err.contains("stepz"), "{err}");
        let err = load("[train]\nsteps = \"many\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("steps") || err.contains("integer"), "{err}");
        let err = load("", &["train.lr=-1"]).unwrap_err().to_string();
        assert!(err.contains("train.lr"), "{err}");
        let err = load("", &["data.channels=2"]).unwrap_err().to_string();
        assert!(err.contains("data.channels"), "{err}");
        let err = load("", &["model.schedule=cosine"]).unwrap_err().to_string();
        assert!(err.contains("schedule"), "{err}");
        let err = load("", &["nokey"]).unwrap_err().to_string();
        assert!(err.contains("key=value"), "{err}");
    }
}
