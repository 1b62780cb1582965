//! The `[data]` section of a run config.

use crate::bucket::BucketConfig;
use crate::mask::MaskSource;
use crate::subset::SubsetConfig;
use difforge_core::{check_range, ConfigError};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

difforge_core::choice! {
    /// Where the images come from.
    pub enum SourceKind {
        /// The embedded OpenCV digits sheet (5,000 labelled 20x20 digits).
        Digits = "digits",
        /// A folder of images, searched recursively; the class is the first-level subfolder.
        Folder = "folder",
        /// IDX files as used by MNIST and Fashion-MNIST (gzipped or not); `path` is the images file.
        Idx = "idx",
        /// Webdataset tar shards streamed from disk, for data that does not fit in memory;
        /// `path` is a folder of `*.tar` shards or a brace pattern `DIR/{000000..000099}.tar`.
        Webdataset = "webdataset",
    }
}

difforge_core::choice! {
    /// Which square the image keeps after its shorter side is resized.
    pub enum CropMode {
        Center = "center",
        Random = "random",
    }
}

difforge_core::choice! {
    pub enum ColorMode {
        Grey = "grey",
        Rgb = "rgb",
    }
}

difforge_core::choice! {
    /// How training batches draw from the classes.
    pub enum Balance {
        /// Every image once per epoch.
        None = "none",
        /// Each draw picks a class uniformly, then the next image of that class (minority classes
        /// are repeated, majority classes thinned), for imbalanced data.
        Class = "class",
    }
}

/// Random augmentations applied when a training batch is assembled. Each has a probability;
/// all draws come from (seed, sample position), so a run is repeatable and resumable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Probability of a horizontal flip (0 disables; keep 0 for digits and text).
    pub hflip: f64,
    /// Probability of a random scale-crop (zoom in, then resize back).
    pub scale_crop: f64,
    /// Smallest crop side as a fraction of the image side for scale-crop, in (0, 1].
    pub scale_min: f64,
    /// Probability of a small rotation.
    pub rotate: f64,
    /// Largest rotation angle in degrees (uniform in [-deg, deg]).
    pub rotate_degrees: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig { hflip: 0.0, scale_crop: 0.0, scale_min: 0.8, rotate: 0.0, rotate_degrees: 10.0 }
    }
}

/// The `[data]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Where images come from: "digits" (embedded), "folder", "idx" or "webdataset".
    pub source: SourceKind,
    /// Folder (source = "folder"), IDX images file (source = "idx"), or shard folder or brace
    /// pattern (source = "webdataset"); unused for "digits".
    pub path: Option<PathBuf>,
    /// IDX labels file; by default derived from `path` ("images-idx3" -> "labels-idx1").
    pub labels_path: Option<PathBuf>,
    /// Class names in label order: for IDX data; for folders, the label of each subfolder
    /// (default: the sorted subfolder names); unused for digits ("0".."9").
    pub class_names: Vec<String>,
    /// Side of the square images the model sees, in pixels.
    pub image_size: u32,
    /// 1 (grey) or 3 (RGB). Alpha is composited on white.
    pub channels: u32,
    /// Pixels of black border added around each image before resizing.
    pub pad: u32,
    /// After the shorter side is resized to `image_size`: "center" or "random" crop.
    pub crop: CropMode,
    /// Fraction of the images held out for validation (seeded, stable across runs), in [0, 0.9].
    pub val_fraction: f64,
    /// A separate folder of validation images (same classes); when set, every image of
    /// `path` trains and `val_fraction` is not used.
    pub val_path: Option<PathBuf>,
    /// Skip files larger than this many pixels (width x height) without decoding them.
    pub max_pixels: u64,
    /// Check the data before training (duplicates, corrupt files, imbalance, outliers) and
    /// print the problems found.
    pub check: bool,
    /// "none" or "class" (class-balanced sampling).
    pub balance: Balance,
    pub augment: AugmentConfig,
    /// Samples held by the shuffle buffer of a webdataset stream: shards are read in order, so
    /// this (with the per-epoch shard order) is what mixes neighbouring samples.
    pub shuffle_buffer: usize,
    /// Folder source: the extension of an image's sidecar caption file, the image's name with
    /// this extension instead of its own (".txt": `a.png` -> `a.txt`; kohya's ".caption" works
    /// too). A `metadata.jsonl`/`metadata.csv` caption wins over the sidecar.
    pub caption_extension: String,
    /// Folder source: the caption column of a `metadata.jsonl` or `metadata.csv` at the folder's
    /// root, read as diffusers' imagefolder reads it (a `file_name` column, the image's path
    /// relative to the folder, and this one).
    pub caption_column: String,
    /// Every image's caption, whatever its sidecar says (DreamBooth's instance prompt, e.g.
    /// "a photo of sks dog"); in-memory sources only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_prompt: Option<String>,
    /// Aspect-ratio buckets (`[data.buckets]`, kohya's scheme): each image trains at the bucket
    /// nearest its shape, batches come from one bucket. None: square crops of `image_size`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buckets: Option<BucketConfig>,
    /// Several folders with settings of their own (`[[data.subsets]]`), instead of `path`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<SubsetConfig>,
    /// Masked loss with each image's alpha channel as its mask (kohya's `alpha_mask`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub alpha_mask: bool,
    /// Masked loss with masks from this folder: greyscale PNGs at the images' relative paths.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask_path: Option<PathBuf>,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            source: SourceKind::Digits,
            path: None,
            labels_path: None,
            class_names: Vec::new(),
            image_size: 32,
            channels: 1,
            pad: 0,
            crop: CropMode::Center,
            val_fraction: 0.1,
            val_path: None,
            max_pixels: 64 * 1024 * 1024,
            check: true,
            balance: Balance::None,
            augment: AugmentConfig::default(),
            shuffle_buffer: 1000,
            caption_extension: ".txt".into(),
            caption_column: "text".into(),
            instance_prompt: None,
            buckets: None,
            subsets: Vec::new(),
            alpha_mask: false,
            mask_path: None,
        }
    }
}

/// A sidecar caption extension (`data.caption_extension`, `--caption-extension`): a dot, then a
/// name with no path separator (".txt", ".caption").
pub fn check_caption_extension(key: &str, extension: &str) -> Result<(), ConfigError> {
    let ok = extension.len() > 1 && extension.starts_with('.') && !extension.contains(['/', '\\']) && extension != "..";
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(key, format!("{extension:?}"), "an extension starting with '.' and without '/', such as \".txt\" or \".caption\""))
    }
}

impl DataConfig {
    pub fn color_mode(&self) -> ColorMode {
        if self.channels == 1 {
            ColorMode::Grey
        } else {
            ColorMode::Rgb
        }
    }

    /// Range checks, naming the offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.channels == 1 || self.channels == 3) {
            return Err(ConfigError::new("data.channels", self.channels, "1 (grey) or 3 (RGB)"));
        }
        if !(4..=1024).contains(&self.image_size) {
            return Err(ConfigError::new("data.image_size", self.image_size, "4..=1024"));
        }
        check_range("data.val_fraction", self.val_fraction, 0.0, 0.9)?;
        if !self.subsets.is_empty() {
            self.validate_subsets()?;
        } else if self.source != SourceKind::Digits && self.path.is_none() {
            return Err(ConfigError::problem("data.path", format!("required for data.source = \"{}\"", self.source.name())));
        }
        if self.pad > 1024 {
            return Err(ConfigError::new("data.pad", self.pad, "0..=1024 pixels"));
        }
        if self.shuffle_buffer == 0 {
            return Err(ConfigError::new("data.shuffle_buffer", self.shuffle_buffer, "at least 1 sample"));
        }
        if self.max_pixels == 0 {
            return Err(ConfigError::new("data.max_pixels", self.max_pixels, "at least 1"));
        }
        check_caption_extension("data.caption_extension", &self.caption_extension)?;
        if self.instance_prompt.is_some() && self.source == SourceKind::Webdataset {
            return Err(ConfigError::problem("data.instance_prompt", "not for data.source = \"webdataset\" (give the shards' .txt captions instead)"));
        }
        if self.caption_column.trim().is_empty() {
            return Err(ConfigError::new("data.caption_column", format!("{:?}", self.caption_column), "a column name such as \"text\""));
        }
        if let Some(b) = &self.buckets {
            self.validate_buckets(b)?;
        }
        self.validate_masks()?;
        let a = &self.augment;
        for (key, p) in [("data.augment.hflip", a.hflip), ("data.augment.scale_crop", a.scale_crop), ("data.augment.rotate", a.rotate)] {
            check_range(key, p, 0.0, 1.0)?;
        }
        if !(a.scale_min > 0.0 && a.scale_min <= 1.0) {
            return Err(ConfigError::new("data.augment.scale_min", a.scale_min, "0.0 < x <= 1.0"));
        }
        check_range("data.augment.rotate_degrees", a.rotate_degrees, 0.0, 180.0)
    }

    /// Where loss masks come from (None: no masked loss).
    pub fn mask_source(&self) -> Option<MaskSource> {
        match (&self.mask_path, self.alpha_mask) {
            (Some(dir), _) => Some(MaskSource::Folder(dir.clone())),
            (None, true) => Some(MaskSource::Alpha),
            (None, false) => None,
        }
    }

    fn validate_masks(&self) -> Result<(), ConfigError> {
        if let (Some(dir), true) = (&self.mask_path, self.alpha_mask) {
            return Err(ConfigError::new("data.mask_path", dir.display(), "absent with data.alpha_mask = true (one source of masks)"));
        }
        if self.mask_source().is_some() && self.source != SourceKind::Folder {
            let key = if self.alpha_mask { "data.alpha_mask" } else { "data.mask_path" };
            return Err(ConfigError::new(
                key,
                format!("data.source = \"{}\"", self.source.name()),
                "data.source = \"folder\" (masks are read beside image files)",
            ));
        }
        if let Some(dir) = &self.mask_path {
            if !dir.is_dir() {
                return Err(ConfigError::new("data.mask_path", dir.display(), "an existing folder of mask images"));
            }
        }
        Ok(())
    }

    /// This section for one folder alone (a subset, a validation or samples folder).
    /// Refuses a `data.path` the source would not read: with the embedded digits, the digits
    /// would train while the user believes their folder does. For configs a user gives; a
    /// checkpoint's saved config (written before this check) still loads.
    pub fn check_path_is_read(&self) -> Result<(), ConfigError> {
        match (self.source, &self.path) {
            (SourceKind::Digits, Some(path)) => Err(ConfigError::new(
                "data.path",
                path.display(),
                "absent with data.source = \"digits\" (the embedded digits); for this folder set data.source = \"folder\"",
            )),
            _ => Ok(()),
        }
    }

    pub fn for_folder(&self, path: &std::path::Path) -> DataConfig {
        DataConfig { source: SourceKind::Folder, path: Some(path.to_path_buf()), subsets: Vec::new(), ..self.clone() }
    }

    fn validate_subsets(&self) -> Result<(), ConfigError> {
        if self.source != SourceKind::Folder {
            return Err(ConfigError::new("data.subsets", format!("data.source = \"{}\"", self.source.name()), "data.source = \"folder\""));
        }
        if let Some(path) = &self.path {
            return Err(ConfigError::new("data.path", path.display(), "absent with [[data.subsets]] (each subset names its folder)"));
        }
        for (i, subset) in self.subsets.iter().enumerate() {
            subset.validate(i)?;
        }
        Ok(())
    }

    /// Buckets hold in-memory folders of any shape; the augmentations that assume a square
    /// image and class balancing (which draws images one by one, not by bucket) are refused.
    fn validate_buckets(&self, b: &BucketConfig) -> Result<(), ConfigError> {
        b.validate()?;
        if self.source != SourceKind::Folder {
            return Err(ConfigError::new(
                "data.buckets",
                format!("data.source = \"{}\"", self.source.name()),
                "data.source = \"folder\" (buckets place images of any shape)",
            ));
        }
        for (key, p) in [("data.augment.scale_crop", self.augment.scale_crop), ("data.augment.rotate", self.augment.rotate)] {
            if p > 0.0 {
                return Err(ConfigError::new(key, p, "0.0 with [data.buckets] (these augmentations need square images; data.augment.hflip works)"));
            }
        }
        if self.balance == Balance::Class {
            return Err(ConfigError::new("data.balance", "\"class\"", "\"none\" with [data.buckets] (batches come whole from one bucket)"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_with_the_embedded_digits_is_refused_rather_than_ignored() {
        let data = DataConfig { path: Some("/my/images".into()), ..DataConfig::default() };
        assert_eq!(data.source, SourceKind::Digits);
        data.validate().unwrap();
        let err = data.check_path_is_read().unwrap_err().to_string();
        assert!(err.contains("data.path") && err.contains("/my/images") && err.contains("data.source = \"folder\""), "{err}");
        DataConfig { source: SourceKind::Folder, ..data }.check_path_is_read().unwrap();
    }
}
