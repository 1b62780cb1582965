//! IDX files (the MNIST / Fashion-MNIST format), plain or gzipped: a big-endian header with a
//! magic (two zero bytes, the element type 0x08 = u8, the number of dimensions), the dimension
//! sizes, then the raw bytes.

use crate::error::DataError;
use crate::image_set::ImageSet;
use crate::preprocess::Preprocess;
use flate2::read::GzDecoder;
use image::{DynamicImage, GrayImage};
use rayon::prelude::*;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Dimensions and bytes of an IDX file of unsigned bytes.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(&raw[..]).read_to_end(&mut out).map_err(|e| DataError::io(path, e))?;
        out
    } else {
        raw
    };
    let bad = |reason: String| DataError::Idx { path: path.to_path_buf(), reason };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("missing the IDX magic (00 00 type ndims)".into()));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!("element type 0x{:02x}; only unsigned bytes (0x08) are supported", bytes[2])));
    }
    let ndims = bytes[3] as usize;
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(bad("truncated header".into()));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|i| {
            let b = &bytes[4 + 4 * i..8 + 4 * i];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect();
    let expected = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| bad("dimensions overflow".into()))?;
    if bytes.len() - header != expected {
        return Err(bad(format!("dimensions {dims:?} need {expected} bytes of data, found {}", bytes.len() - header)));
    }
    Ok((dims, bytes[header..].to_vec()))
}

/// The labels file that goes with an images file, by the MNIST naming convention.
fn default_labels_path(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_str()?;
    name.contains("images-idx3").then(|| images.with_file_name(name.replace("images-idx3", "labels-idx1")))
}

pub fn load_idx(images: &Path, labels: Option<&Path>, class_names: &[String], prep: &Preprocess) -> Result<ImageSet, DataError> {
    let (dims, data) = read_idx(images)?;
    if dims.len() != 3 {
        return Err(DataError::Idx { path: images.to_path_buf(), reason: format!("images need 3 dimensions (N, rows, cols), found {dims:?}") });
    }
    let (n, rows, cols) = (dims[0], dims[1], dims[2]);
    let labels_path = labels.map(Path::to_path_buf).or_else(|| default_labels_path(images));
    let labels: Option<Vec<u8>> = match &labels_path {
        Some(p) if p.exists() || labels.is_some() => {
            let (ldims, l) = read_idx(p)?;
            if ldims != [n] {
                return Err(DataError::Idx { path: p.clone(), reason: format!("expected {n} labels, dimensions are {ldims:?}") });
            }
            Some(l)
        }
        _ => None,
    };
    let num_classes = labels.as_ref().map_or(0, |l| l.iter().copied().max().map_or(0, |m| m as usize + 1));
    if !class_names.is_empty() && class_names.len() < num_classes {
        return Err(difforge_core::ConfigError::new(
            "data.class_names",
            format!("{} names", class_names.len()),
            format!("at least {num_classes} (the labels go up to {})", num_classes - 1),
        )
        .into());
    }
    let names = if class_names.is_empty() { (0..num_classes).map(|c| c.to_string()).collect() } else { class_names.to_vec() };
    let pixels: Vec<_> = (0..n)
        .into_par_iter()
        .map(|i| {
            let cell = data[i * rows * cols..(i + 1) * rows * cols].to_vec();
            let img = GrayImage::from_raw(cols as u32, rows as u32, cell).expect("size checked above");
            prep.apply(&DynamicImage::ImageLuma8(img))
        })
        .collect();
    let mut set = ImageSet { class_names: names, ..Default::default() };
    for (i, px) in pixels.into_iter().enumerate() {
        let label = labels.as_ref().map(|l| l[i] as usize);
        set.push(px, label, None, format!("idx/{i:06}"));
    }
    if set.is_empty() {
        return Err(DataError::NoImages { path: images.to_path_buf(), skipped: 0 });
    }
    Ok(set)
}
