//! The run's data: loaded once, checked against the model (and by the data check when
//! `data.check` is on), and split into training and validation images.

use crate::error::TrainError;
use difforge_config::RunConfig;
use difforge_data::check::{check_folder, check_set, CheckOptions};
use difforge_data::{source, ImageSet, SourceKind, Split};
use difforge_model::Family;
use std::sync::Arc;

/// Loads the dataset, checks it against the model family and splits it.
pub fn load(cfg: &RunConfig, family: &dyn Family) -> Result<(Arc<ImageSet>, Split), TrainError> {
    let set = source::load(&cfg.data)?;
    if let Some(first) = set.skipped.first() {
        tracing::warn!("{} unreadable image file(s) skipped, e.g. {}: {}", set.skipped.len(), first.path.display(), first.reason);
    }
    for note in family.check_data(&set)? {
        tracing::info!("{note}");
    }
    if cfg.data.check {
        for w in data_check_warnings(cfg, &set)? {
            tracing::warn!("data check: {w}");
        }
    }
    let split = if cfg.data.val_path.is_some() {
        Split { train: (0..set.len()).collect(), val: Vec::new() }
    } else {
        Split::new(&set.ids, cfg.data.val_fraction, cfg.seed)
    };
    if split.train.is_empty() {
        return Err(difforge_core::ConfigError::new("data.val_fraction", cfg.data.val_fraction, "a fraction that leaves training images").into());
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
