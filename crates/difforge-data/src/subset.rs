//! Several image folders in one dataset (`[[data.subsets]]`, as kohya's dataset TOML has them):
//! each with its own repeats (how many times its images appear in an epoch), caption extension,
//! instance prompt, caption dropout, tag shuffling and flip probability. Loaded one by one as
//! folders and merged into one [`ImageSet`] that remembers each image's subset.

use crate::bucket::BucketReport;
use crate::config::{check_caption_extension, DataConfig};
use crate::error::DataError;
use crate::image_set::ImageSet;
use difforge_core::{check_range, ConfigError};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One `[[data.subsets]]` entry; unset options take the run's (`data.*`, `model.*`, `diffusion.*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubsetConfig {
    /// The subset's folder (read like `data.path` with `data.source = "folder"`).
    pub path: PathBuf,
    /// Each image appears this many times per epoch (kohya's `num_repeats`).
    #[serde(default = "one")]
    pub repeats: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption_extension: Option<String>,
    /// Every image's caption in this subset (DreamBooth's instance or class prompt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_prompt: Option<String>,
    /// Probability that a caption is replaced by the empty one (else `diffusion.class_dropout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption_dropout: Option<f64>,
    /// Shuffle comma-separated tags (else `model.shuffle_caption`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shuffle_caption: Option<bool>,
    /// Leading tags that stay in place when shuffling (else `model.keep_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_tokens: Option<usize>,
    /// Probability of a horizontal flip (else `data.augment.hflip`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hflip: Option<f64>,
}

fn one() -> u32 {
    1
}

/// How one image's caption is treated in training; None: the run's setting.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CaptionRule {
    pub dropout: Option<f64>,
    pub shuffle: Option<bool>,
    pub keep_tokens: Option<usize>,
}

/// What an image's subset changes in training.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SubsetRules {
    pub repeats: u32,
    pub caption: CaptionRule,
    pub hflip: Option<f64>,
}

impl SubsetConfig {
    /// Range checks, naming the key as `data.subsets[i].<field>`.
    pub fn validate(&self, i: usize) -> Result<(), ConfigError> {
        let key = |field: &str| format!("data.subsets[{i}].{field}");
        if self.path.as_os_str().is_empty() {
            return Err(ConfigError::problem(key("path"), "a folder of images"));
        }
        if !(1..=10_000).contains(&self.repeats) {
            return Err(ConfigError::new(key("repeats"), self.repeats, "1..=10000"));
        }
        if let Some(ext) = &self.caption_extension {
            check_caption_extension(&key("caption_extension"), ext)?;
        }
        if let Some(p) = self.caption_dropout {
            check_range(&key("caption_dropout"), p, 0.0, 1.0)?;
        }
        if let Some(p) = self.hflip {
            check_range(&key("hflip"), p, 0.0, 1.0)?;
        }
        Ok(())
    }

    fn rules(&self) -> SubsetRules {
        let caption = CaptionRule { dropout: self.caption_dropout, shuffle: self.shuffle_caption, keep_tokens: self.keep_tokens };
        SubsetRules { repeats: self.repeats, caption, hflip: self.hflip }
    }

    /// The `[data]` section that loads this subset alone: the run's, with this folder and the
    /// subset's caption settings.
    fn data_config(&self, run: &DataConfig) -> DataConfig {
        let mut data = run.for_folder(&self.path);
        if let Some(ext) = &self.caption_extension {
            data.caption_extension = ext.clone();
        }
        if self.instance_prompt.is_some() {
            data.instance_prompt = self.instance_prompt.clone();
        }
        data
    }
}

/// Loads every subset of `run` and merges them: ids become `<subset path>/<file>`, class labels
/// are remapped by name, skipped files and bucket reports are combined.
pub fn load_subsets(run: &DataConfig) -> Result<ImageSet, DataError> {
    let mut merged = ImageSet::default();
    for (k, subset) in run.subsets.iter().enumerate() {
        let set = crate::source::load(&subset.data_config(run))?;
        merged.subset_rules.push(subset.rules());
        append(&mut merged, set, k, &subset.path.display().to_string());
    }
    Ok(merged)
}

fn append(merged: &mut ImageSet, set: ImageSet, k: usize, prefix: &str) {
    for (i, px) in set.pixels.into_iter().enumerate() {
        let label = set.labels[i].map(|l| class_index(&mut merged.class_names, &set.class_names[l]));
        merged.pixels.push(px);
        merged.labels.push(label);
        merged.captions.push(set.captions[i].clone());
        merged.ids.push(format!("{prefix}/{}", set.ids[i]));
        merged.subset_of.push(k);
    }
    merged.masked = set.masked;
    merged.fits.extend(set.fits);
    merged.skipped.extend(set.skipped);
    let report = set.bucket_report.map(|mut r| {
        for d in &mut r.dropped {
            d.id = format!("{prefix}/{}", d.id);
        }
        r
    });
    merged.bucket_report = match (merged.bucket_report.take(), report) {
        (Some(a), Some(b)) => Some(BucketReport::merge(a, b)),
        (a, b) => a.or(b),
    };
}

fn class_index(names: &mut Vec<String>, name: &str) -> usize {
    names.iter().position(|n| n == name).unwrap_or_else(|| {
        names.push(name.to_string());
        names.len() - 1
    })
}
