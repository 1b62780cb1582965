//! The run's data: loaded once, checked against the model (and by the data check when
//! `data.check` is on), and split into training and validation images.

use crate::error::TrainError;
use difforge_config::RunConfig;
use difforge_data::check::{check_folder, check_set, CheckOptions};
use difforge_data::{source, ImageSet, SourceKind, Split};
use difforge_model::Family;
use std::path::Path;
use std::sync::Arc;

/// Where the full data check of a run is written.
pub const CHECK_REPORT: &str = "data-check.json";

/// Loads the dataset, checks it against the model family (and with `data.check`, with the data
/// check, whose full report goes to `run_dir`) and splits it.
pub fn load(cfg: &RunConfig, family: &dyn Family, run_dir: &Path) -> Result<(Arc<ImageSet>, Split), TrainError> {
    let set = source::load(&cfg.data)?;
    if let Some(first) = set.skipped.first() {
        tracing::warn!("{} unreadable image file(s) skipped, e.g. {}: {}", set.skipped.len(), first.path.display(), first.reason);
    }
    for note in family.check_data(&set)? {
        tracing::info!("{note}");
    }
    if cfg.data.check {
        for w in data_check_warnings(cfg, &set, run_dir)? {
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

/// The data check's summary for the configured dataset: one line per kind of problem, never the
/// whole list. For folders the full report is written to `run_dir`/data-check.json.
fn data_check_warnings(cfg: &RunConfig, set: &ImageSet, run_dir: &Path) -> Result<Vec<String>, TrainError> {
    let d = &cfg.data;
    let opts = CheckOptions { model_size: d.image_size, channels: d.channels, pad: d.pad, max_pixels: d.max_pixels, ..Default::default() };
    match (d.source, &d.path) {
        (SourceKind::Folder, Some(path)) => {
            let report = check_folder(path, &opts)?;
            let file = run_dir.join(CHECK_REPORT);
            let json = serde_json::to_vec_pretty(&report).map_err(|e| TrainError::Other(e.to_string()))?;
            difforge_core::write_atomic(&file, &json).map_err(|e| TrainError::io(&file, e))?;
            let mut warnings = report.warnings;
            if !warnings.is_empty() {
                warnings.push(format!("the full report is in {}", file.display()));
            }
            Ok(warnings)
        }
        _ => Ok(check_set(set, &opts)),
    }
}
