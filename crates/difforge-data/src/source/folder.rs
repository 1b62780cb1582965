//! An image folder: searched recursively for png, jpg, jpeg, webp and bmp files; the class of an
//! image is the name of the first-level subfolder it lies under; an optional caption lies beside
//! it in a same-named .txt file. Unreadable files are skipped, named and counted.

use crate::error::DataError;
use crate::image_set::{ImageSet, SkippedFile};
use crate::pixels::Pixels;
use crate::preprocess::Preprocess;
use difforge_core::ConfigError;
use image::ImageReader;
use rayon::prelude::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "bmp"];

pub fn is_image_file(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Image files under `root`, sorted by path so that every run sees the same order.
pub fn list_images(root: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| DataError::io(&dir, e))?;
        for entry in entries {
            let path = entry.map_err(|e| DataError::io(&dir, e))?.path();
            if path.is_dir() {
                stack.push(path);
            } else if is_image_file(&path) {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The class of a file: its first-level subfolder under `root`, if any.
pub fn class_of(root: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(root).ok()?;
    let mut parts = rel.components();
    let first = parts.next()?;
    parts.next().map(|_| first.as_os_str().to_string_lossy().into_owned())
}

/// Decodes one file, refusing huge declared dimensions before any pixel is allocated.
pub fn decode(path: &Path, max_pixels: u64) -> Result<image::DynamicImage, String> {
    let open = || ImageReader::open(path).and_then(|r| r.with_guessed_format()).map_err(|e| e.to_string());
    let (w, h) = open()?.into_dimensions().map_err(|e| e.to_string())?;
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(format!("declares {w}x{h} pixels, more than data.max_pixels = {max_pixels}"));
    }
    let mut reader = open()?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(16));
    reader.limits(limits);
    reader.decode().map_err(|e| e.to_string())
}

/// Loads a folder. With `known_classes` (data.class_names) the subfolders are labelled by their
/// position in that list (a fine-tune keeps its base's labels); otherwise by sorted name.
pub fn load_folder(root: &Path, prep: &Preprocess, max_pixels: u64, known_classes: &[String]) -> Result<ImageSet, DataError> {
    if !root.is_dir() {
        return Err(ConfigError::new("data.path", root.display(), "an existing folder of images").into());
    }
    let files = list_images(root)?;
    let classes: BTreeSet<String> = files.iter().filter_map(|f| class_of(root, f)).collect();
    let class_names: Vec<String> = if known_classes.is_empty() {
        classes.into_iter().collect()
    } else {
        if let Some(unknown) = classes.iter().find(|c| !known_classes.contains(c)) {
            return Err(ConfigError::new(
                "data.class_names",
                format!("{known_classes:?}"),
                format!("every subfolder of {} among them (`{unknown}` is not)", root.display()),
            )
            .into());
        }
        known_classes.to_vec()
    };
    let decoded: Vec<Result<Pixels, String>> = files.par_iter().map(|f| decode(f, max_pixels).map(|img| prep.apply(&img))).collect();

    let mut set = ImageSet { class_names, ..Default::default() };
    for (file, result) in files.iter().zip(decoded) {
        match result {
            Ok(px) => {
                let label = class_of(root, file).and_then(|c| set.class_names.iter().position(|n| *n == c));
                let caption = std::fs::read_to_string(file.with_extension("txt")).ok().map(|s| s.trim().to_string());
                let id = file.strip_prefix(root).unwrap_or(file).to_string_lossy().into_owned();
                set.push(px, label, caption, id);
            }
            Err(reason) => {
                tracing::warn!("skipping {}: {reason}", file.display());
                set.skipped.push(SkippedFile { path: file.clone(), reason });
            }
        }
    }
    if set.is_empty() {
        return Err(DataError::NoImages { path: root.to_path_buf(), skipped: set.skipped.len() });
    }
    if !set.skipped.is_empty() {
        tracing::warn!("{} of {} image file(s) skipped as unreadable", set.skipped.len(), files.len());
    }
    Ok(set)
}
