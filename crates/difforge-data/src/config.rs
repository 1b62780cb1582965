//! The `[data]` section of a run config.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where the images come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// The embedded OpenCV digits sheet (5,000 labelled 20x20 digits).
    Digits,
    /// A folder of images, searched recursively; the class is the first-level subfolder.
    Folder,
    /// IDX files as used by MNIST and Fashion-MNIST (gzipped or not); `path` is the images file.
    Idx,
}

impl SourceKind {
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Digits => "digits",
            SourceKind::Folder => "folder",
            SourceKind::Idx => "idx",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CropMode {
    Center,
    Random,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ColorMode {
    Grey,
    Rgb,
}

/// How training batches draw from the classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Every image once per epoch.
    None,
    /// Each draw picks a class uniformly, then the next image of that class (minority classes
    /// are repeated, majority classes thinned), for imbalanced data.
    Class,
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
    /// Where images come from: "digits" (embedded), "folder" or "idx".
    pub source: SourceKind,
    /// Folder (source = "folder") or IDX images file (source = "idx"); unused for "digits".
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
        }
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
    pub fn validate(&self) -> Result<(), String> {
        if !(self.channels == 1 || self.channels == 3) {
            return Err(format!("data.channels = {}: expected 1 (grey) or 3 (RGB)", self.channels));
        }
        if !(4..=1024).contains(&self.image_size) {
            return Err(format!("data.image_size = {}: expected 4..=1024", self.image_size));
        }
        if !(0.0..=0.9).contains(&self.val_fraction) {
            return Err(format!("data.val_fraction = {}: expected 0.0..=0.9", self.val_fraction));
        }
        if self.source != SourceKind::Digits && self.path.is_none() {
            return Err(format!("data.path is required for data.source = \"{}\"", self.source.name()));
        }
        let a = &self.augment;
        for (key, p) in [("hflip", a.hflip), ("scale_crop", a.scale_crop), ("rotate", a.rotate)] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("data.augment.{key} = {p}: expected a probability in 0.0..=1.0"));
            }
        }
        if !(a.scale_min > 0.0 && a.scale_min <= 1.0) {
            return Err(format!("data.augment.scale_min = {}: expected 0.0 < x <= 1.0", a.scale_min));
        }
        if !(0.0..=180.0).contains(&a.rotate_degrees) {
            return Err(format!("data.augment.rotate_degrees = {}: expected 0..=180", a.rotate_degrees));
        }
        Ok(())
    }
}
