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

/// How many times its compressed size a gzipped IDX file may declare.
const MAX_INFLATION: u64 = 100;

/// Dimensions and bytes of an IDX file of unsigned bytes. The header is read first and then
/// exactly the bytes it declares: a gzipped file that inflates to more is refused as soon as the
/// surplus appears, never inflated whole.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
    let mut head = [0u8; 2];
    let mut peek = std::io::BufReader::new(file);
    let gzipped = {
        let buf = std::io::BufRead::fill_buf(&mut peek).map_err(|e| DataError::io(path, e))?;
        if buf.len() >= 2 {
            head.copy_from_slice(&buf[..2]);
        }
        head == [0x1f, 0x8b]
    };
    let mut reader: Box<dyn Read> = if gzipped { Box::new(GzDecoder::new(peek)) } else { Box::new(peek) };
    let bad = |reason: String| DataError::Idx { path: path.to_path_buf(), reason };
    let mut magic = [0u8; 4];
    reader.read_exact(&mut magic).map_err(|_| bad("missing the IDX magic (00 00 type ndims)".into()))?;
    if magic[0] != 0 || magic[1] != 0 {
        return Err(bad("missing the IDX magic (00 00 type ndims)".into()));
    }
    if magic[2] != 0x08 {
        return Err(bad(format!("element type 0x{:02x}; only unsigned bytes (0x08) are supported", magic[2])));
    }
    let ndims = magic[3] as usize;
    let mut raw_dims = vec![0u8; 4 * ndims];
    reader.read_exact(&mut raw_dims).map_err(|_| bad("truncated header".into()))?;
    let dims: Vec<usize> = raw_dims.chunks(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize).collect();
    if dims.contains(&0) {
        return Err(bad(format!("dimensions {dims:?}: every dimension must be at least 1")));
    }
    let expected = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| bad("dimensions overflow".into()))?;
    // Real image data compresses a few times; a thousandfold is a decompression bomb.
    let limit = if gzipped { file_len.saturating_mul(MAX_INFLATION).saturating_add(1 << 20) } else { file_len };
    if expected as u64 > limit {
        return Err(bad(format!("dimensions {dims:?} declare {expected} bytes, more than this {file_len}-byte file can hold")));
    }
    let mut data = Vec::new();
    reader.by_ref().take(expected as u64 + 1).read_to_end(&mut data).map_err(|e| DataError::io(path, e))?;
    if data.len() != expected {
        let found = if data.len() > expected { "more".to_string() } else { data.len().to_string() };
        return Err(bad(format!("dimensions {dims:?} need {expected} bytes of data, found {found}")));
    }
    Ok((dims, data))
}

/// The labels file that goes with an images file, by the MNIST naming convention.
fn default_labels_path(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_str()?;
    name.contains("images-idx3").then(|| images.with_file_name(name.replace("images-idx3", "labels-idx1")))
}

pub fn load_idx(images: &Path, labels: Option<&Path>, class_names: &[String], prep: &Preprocess, max_pixels: u64) -> Result<ImageSet, DataError> {
    let (dims, data) = read_idx(images)?;
    if dims.len() != 3 {
        return Err(DataError::Idx { path: images.to_path_buf(), reason: format!("images need 3 dimensions (N, rows, cols), found {dims:?}") });
    }
    let (n, rows, cols) = (dims[0], dims[1], dims[2]);
    if (rows * cols) as u64 > max_pixels {
        return Err(DataError::Idx {
            path: images.to_path_buf(),
            reason: format!("images of {rows} x {cols} pixels, more than data.max_pixels = {max_pixels}"),
        });
    }
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
