//! Masks for masked loss: which pixels of a training image count in the loss (255 fully, 0 not
//! at all), from the image's own alpha channel (`data.alpha_mask`) or a greyscale file of the same
//! name in a mask folder (`data.mask_path`). A mask is stored as one more channel of the image's
//! pixels, so crops, buckets and augmentations move it exactly as they move the image.

use crate::source::folder::{decode, DecodeError};
use image::imageops::{self, FilterType};
use image::{DynamicImage, GrayImage};
use std::path::{Path, PathBuf};

/// Where masks come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaskSource {
    /// The image's alpha channel (an image without one counts everywhere).
    Alpha,
    /// `<folder>/<the image's path relative to data.path, with a .png extension>`; an image
    /// without a mask file counts everywhere.
    Folder(PathBuf),
}

impl MaskSource {
    /// The mask of `image` (decoded as `img`), at the image's size; None for a folder mask that
    /// does not exist (the image trains unmasked).
    pub fn mask_of(&self, root: &Path, image: &Path, img: &DynamicImage, max_pixels: u64) -> Result<Option<GrayImage>, DecodeError> {
        match self {
            MaskSource::Alpha => Ok(Some(alpha(img))),
            MaskSource::Folder(dir) => {
                let file = dir.join(image.strip_prefix(root).unwrap_or(image)).with_extension("png");
                if !file.is_file() {
                    return Ok(None);
                }
                let mask = decode(&file, max_pixels)?.to_luma8();
                let (w, h) = (img.width(), img.height());
                // A mask drawn at another resolution is stretched over the image.
                Ok(Some(if mask.dimensions() == (w, h) { mask } else { imageops::resize(&mask, w, h, FilterType::Triangle) }))
            }
        }
    }
}

/// The alpha channel as a mask (fully opaque without one).
fn alpha(img: &DynamicImage) -> GrayImage {
    if !img.color().has_alpha() {
        return GrayImage::from_pixel(img.width(), img.height(), image::Luma([255]));
    }
    let rgba = img.to_rgba8();
    GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| image::Luma([rgba.get_pixel(x, y).0[3]]))
}

/// Splits planar pixels with a trailing mask plane into the image (C planes, [-1, 1]) and the
/// mask (one plane, [0, 1]).
pub fn split_mask(mut planar: Vec<f32>, channels: usize) -> (Vec<f32>, Vec<f32>) {
    let plane = planar.len() / (channels + 1);
    let mask = planar.split_off(channels * plane).into_iter().map(|v| (v + 1.0) / 2.0).collect();
    (planar, mask)
}
