//! Loss masks: from the alpha channel or a mask folder, stored beside the pixels, cropped,
//! flipped and bucketed with them, and split off into `Batch::masks`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use difforge_data::bucket::BucketConfig;
use difforge_data::{source, AugmentConfig, CropMode, DataConfig, Loader, SourceKind};
use std::path::Path;
use std::sync::Arc;

/// A 16x8 RGBA image transparent on its left half.
fn half_transparent(dir: &Path, name: &str) {
    image::RgbaImage::from_fn(16, 8, |x, _| image::Rgba([200, 10, 10, if x < 8 { 0 } else { 255 }])).save(dir.join(name)).unwrap();
}

fn folder_config(dir: &Path) -> DataConfig {
    DataConfig { source: SourceKind::Folder, path: Some(dir.to_path_buf()), channels: 3, image_size: 8, ..Default::default() }
}

/// The mask rows of image `i` of a batch (H x W).
fn mask_of(batch: &difforge_data::Batch, i: usize) -> &[f32] {
    let hw = batch.height * batch.width;
    &batch.masks[i * hw..(i + 1) * hw]
}

#[test]
fn the_alpha_channel_masks_the_loss_and_moves_with_crops_and_flips() {
    let dir = tempfile::tempdir().unwrap();
    half_transparent(dir.path(), "a.png");
    let cfg = DataConfig { alpha_mask: true, ..folder_config(dir.path()) };
    cfg.validate().unwrap();
    let set = Arc::new(source::load(&cfg).unwrap());
    assert!(set.masked);
    assert_eq!((set.channels(), set.pixels[0].channels), (3, 4));
    // The 16x8 image keeps its shape (shorter side 8); the left 8x8 crop is all transparent.
    let mut left = Loader::new(set.clone(), vec![0], 8, CropMode::Center, AugmentConfig::default(), 0);
    let b = left.train_batch(0, 1);
    assert_eq!((b.images.len(), b.masks.len()), (3 * 64, 64));
    // A centred 8-wide window of 16 covers columns 4..12: half masked.
    let row = &mask_of(&b, 0)[..8];
    assert_eq!(row, [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
    // Composited on white where transparent, as without masks.
    assert_eq!(((b.images[0] + 1.0) * 127.5).round(), 255.0);
    let flip = AugmentConfig { hflip: 1.0, ..Default::default() };
    let b = Loader::new(set.clone(), vec![0], 8, CropMode::Center, flip, 0).train_batch(0, 1);
    assert_eq!(&mask_of(&b, 0)[..8], [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    // With buckets the stored pixels cover the bucket, the mask with them.
    let buckets = BucketConfig { resolution: 16, min_size: 8, max_size: 32, step: 8, no_upscale: false };
    let bucketed = Arc::new(source::load(&DataConfig { buckets: Some(buckets), ..cfg.clone() }).unwrap());
    let b = Loader::new(bucketed, vec![0], 8, CropMode::Center, AugmentConfig::default(), 0).train_batch(0, 1);
    assert_eq!(b.masks.len(), b.height * b.width);
    assert!(mask_of(&b, 0)[0] < 0.01 && mask_of(&b, 0)[b.width - 1] > 0.99, "left transparent, right opaque");
}

#[test]
fn a_mask_folder_masks_by_name_and_a_missing_mask_counts_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let (images, masks) = (dir.path().join("images"), dir.path().join("masks"));
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(&masks).unwrap();
    for name in ["a.png", "b.png"] {
        image::RgbImage::from_pixel(8, 8, image::Rgb([0, 0, 200])).save(images.join(name)).unwrap();
    }
    // a's mask, drawn at twice the size: the top half counts.
    image::GrayImage::from_fn(16, 16, |_, y| image::Luma([if y < 8 { 255 } else { 0 }])).save(masks.join("a.png")).unwrap();
    let cfg = DataConfig { mask_path: Some(masks.clone()), ..folder_config(&images) };
    cfg.validate().unwrap();
    let set = Arc::new(source::load(&cfg).unwrap());
    let b = Loader::new(set, vec![0, 1], 8, CropMode::Center, AugmentConfig::default(), 0).fixed_batch(&[0, 1]);
    let (a, full) = (mask_of(&b, 0), mask_of(&b, 1));
    assert!(a[..24].iter().all(|&m| m > 0.99) && a[40..].iter().all(|&m| m < 0.01), "{a:?}");
    assert!(full.iter().all(|&m| m == 1.0));
    // One source of masks; an existing folder; folders only.
    let both = DataConfig { alpha_mask: true, ..cfg.clone() };
    assert!(both.validate().unwrap_err().to_string().contains("data.mask_path"));
    let missing = DataConfig { mask_path: Some(dir.path().join("nope")), ..cfg.clone() };
    assert!(missing.validate().unwrap_err().to_string().contains("data.mask_path"));
    let digits = DataConfig { source: SourceKind::Digits, path: None, mask_path: None, alpha_mask: true, ..cfg };
    assert!(digits.validate().unwrap_err().to_string().contains("data.alpha_mask"));
}
