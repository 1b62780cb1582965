//! The real images an evaluation compares against: a split of a dataset, preprocessed exactly as
//! the model's training data (size, channels, padding, centre crop), as `[N, C, S, S]` in [-1, 1].

use crate::EvalError;
use difforge_data::{source, DataConfig, Loader, SourceKind, Split};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use tch::Tensor;

/// Which part of a dataset to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitChoice {
    /// The held-out validation split (the same one training held out, from the same seed).
    Val,
    Train,
    All,
}

impl SplitChoice {
    pub fn parse(text: &str) -> Option<SplitChoice> {
        match text {
            "val" | "validation" => Some(SplitChoice::Val),
            "train" => Some(SplitChoice::Train),
            "all" => Some(SplitChoice::All),
            _ => None,
        }
    }
}

/// Images of one split, with their labels and stable ids.
pub struct RealImages {
    pub images: Tensor,
    /// Class index per image (-1: unlabelled).
    pub labels: Vec<i64>,
    pub ids: Vec<String>,
    pub class_names: Vec<String>,
    /// Caption per image (None: it has none).
    pub captions: Vec<Option<String>>,
    /// What these are, for reports: "digits (embedded), validation split".
    pub description: String,
}

/// The dataset named on the command line, preprocessed like `base` (the model's data config):
/// `digits` (the embedded sheet), a TOML run config (its `[data]`), or an image folder.
pub fn resolve_dataset(spec: &str, base: &DataConfig) -> Result<DataConfig, EvalError> {
    let mut data = base.clone();
    let path = Path::new(spec);
    if spec == "digits" {
        data.source = SourceKind::Digits;
        data.path = None;
        data.labels_path = None;
        data.subsets = Vec::new();
        data.buckets = None;
    } else if path.extension().is_some_and(|e| e == "toml") {
        let cfg =
            difforge_config::RunConfig::load(Some(path), &[]).map_err(|e| difforge_core::ConfigError::new("--data", spec, format!("a valid config ({e})")))?;
        // Its own source and split, at the model's resolution and colour mode.
        data = difforge_data::DataConfig { image_size: base.image_size, channels: base.channels, ..cfg.data };
    } else if path.is_dir() {
        data = DataConfig { labels_path: None, val_path: None, ..base.for_folder(path) };
    } else {
        return Err(difforge_core::ConfigError::new("--data", spec, "`digits`, a TOML config with a [data] section, or an image folder").into());
    }
    data.validate().map_err(|e| difforge_core::ConfigError::new("--data", spec, format!("data the model can use ({e})")))?;
    Ok(data)
}

/// Loads a split of `data`, split with `seed` as training does.
pub fn load_split(data: &DataConfig, seed: u64, choice: SplitChoice) -> Result<RealImages, EvalError> {
    let set = Arc::new(source::load(data)?);
    let (indices, split_name) = match (choice, &data.val_path) {
        (SplitChoice::All, _) => ((0..set.len()).collect::<Vec<_>>(), "all images"),
        // With a separate validation folder, training used the whole dataset.
        (SplitChoice::Train, Some(_)) => ((0..set.len()).collect(), "training images"),
        (SplitChoice::Val, Some(path)) => {
            let mut val = data.for_folder(path);
            val.val_path = None;
            if val.class_names.is_empty() {
                val.class_names = set.class_names.clone();
            }
            return load_split(&val, seed, SplitChoice::All).map(|mut r| {
                r.description = format!("{} (data.val_path)", path.display());
                r
            });
        }
        (SplitChoice::Train, None) => (Split::new(&set.ids, data.val_fraction, seed).train, "training split"),
        (SplitChoice::Val, None) => (Split::new(&set.ids, data.val_fraction, seed).val, "validation split"),
    };
    if indices.is_empty() {
        return Err(EvalError::Input(format!("the {split_name} of {} is empty", describe(data))));
    }
    let loader = Loader::new(set.clone(), Vec::new(), data.image_size, data.crop, Default::default(), seed);
    let batch = loader.fixed_batch(&indices);
    Ok(RealImages {
        images: Tensor::from_slice(&batch.images).view(batch.shape()),
        labels: batch.labels.clone(),
        ids: indices.iter().map(|&i| set.ids[i].clone()).collect(),
        class_names: set.class_names.clone(),
        captions: indices.iter().map(|&i| set.captions[i].clone()).collect(),
        description: format!("{}, {split_name}", describe(data)),
    })
}

fn describe(data: &DataConfig) -> String {
    match (&data.source, &data.path) {
        (SourceKind::Digits, _) => "digits (embedded)".to_string(),
        (_, Some(path)) => path.display().to_string(),
        (kind, None) => kind.name().to_string(),
    }
}
