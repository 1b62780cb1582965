//! Which noise levels a model has learnt: the validation loss per timestep band (the trainer's
//! own deterministic validation, same images, timesteps and noise), for one or more checkpoints.

use crate::svg::{line_chart, Series};
use difforge_data::{source, Split};
use difforge_train::validation::{validation_batch, ValidationLoss, Validator};
use difforge_train::{DiffusionModel, TrainError};
use serde::Serialize;
use std::sync::Arc;

#[derive(Serialize)]
pub struct TimestepProfile {
    pub label: String,
    pub step: u64,
    pub raw: ValidationLoss,
    pub ema: ValidationLoss,
}

/// The validation loss per band of `model`, exactly as its training run computes it.
pub fn profile(model: &DiffusionModel, label: &str, step: u64) -> Result<TimestepProfile, TrainError> {
    let cfg = &model.config;
    let set = Arc::new(source::load(&cfg.data)?);
    let split = Split::new(&set.ids, cfg.data.val_fraction, cfg.seed);
    let t = &cfg.train;
    let batch = validation_batch(cfg, &set, &split)?
        .ok_or_else(|| TrainError::Config("the dataset has no validation images (data.val_fraction = 0 and no data.val_path)".into()))?;
    let v = Validator::new(model, &batch, t.val_repeats, t.val_bands);
    Ok(TimestepProfile { label: label.to_string(), step, raw: v.evaluate(model, &model.unet), ema: v.evaluate(model, &model.ema) })
}

pub fn chart(profiles: &[TimestepProfile]) -> String {
    let bands = profiles.first().map_or(0, |p| p.ema.bands.len());
    let labels: Vec<String> = (0..bands).map(|b| format!("{}", b + 1)).collect();
    let names: Vec<String> = profiles.iter().map(|p| format!("{} (EMA, step {})", p.label, p.step)).collect();
    let series: Vec<Series> = profiles.iter().zip(&names).map(|(p, n)| Series { name: n, values: &p.ema.bands }).collect();
    line_chart("validation loss per noise level", &labels, "loss (training objective)", &series)
}
