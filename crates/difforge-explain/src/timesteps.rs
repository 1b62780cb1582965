//! Which noise levels a model has learnt: the validation loss per timestep band (the trainer's
//! own deterministic validation, same images, timesteps and noise), for one or more checkpoints.

use difforge_data::{source, Split};
use difforge_model::validation::{validation_batch, ValidationLoss, Validator};
use difforge_model::{DiffusionModel, ModelError, Weights};
use difforge_report::{line_chart_png, ReportError, Series};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;

#[derive(Serialize)]
pub struct TimestepProfile {
    pub label: String,
    pub step: u64,
    pub raw: ValidationLoss,
    pub ema: ValidationLoss,
}

/// The validation loss per band of `model`, exactly as its training run computes it.
pub fn profile(model: &DiffusionModel, label: &str, step: u64) -> Result<TimestepProfile, ModelError> {
    let cfg = model.config();
    let set = Arc::new(source::load(&cfg.data)?);
    let split = Split::new(&set.ids, cfg.data.val_fraction, cfg.seed);
    let t = &cfg.train;
    let batch = validation_batch(cfg, &set, &split)?.ok_or_else(|| {
        difforge_core::ConfigError::problem("data.val_fraction", "the dataset has no validation images (data.val_fraction = 0 and no data.val_path)")
    })?;
    let v = Validator::new(model, &batch, t.val_repeats, t.val_bands);
    Ok(TimestepProfile { label: label.to_string(), step, raw: v.evaluate(model, Weights::Raw)?, ema: v.evaluate(model, Weights::Ema)? })
}

/// The EMA validation loss per band of each profile as a line chart (band 1 = least noise).
pub fn chart(profiles: &[TimestepProfile], path: &Path) -> Result<(), ReportError> {
    let series: Vec<Series> = profiles
        .iter()
        .map(|p| Series {
            name: format!("{} (EMA, step {})", p.label, p.step),
            points: p.ema.bands.iter().enumerate().map(|(b, &v)| ((b + 1) as f64, v)).collect(),
        })
        .collect();
    line_chart_png(path, "Validation loss per noise level", "timestep band (noisier to the right)", "loss (training objective)", &series)
}
