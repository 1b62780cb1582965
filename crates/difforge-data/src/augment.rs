//! Augmentations on one planar float image (C x S x S, values in [-1, 1]). The random draws are
//! made by the caller from a seeded generator, so each function here is a pure transform.

use crate::config::AugmentConfig;
use rand::Rng;

/// Mirrors each row.
pub fn hflip(img: &mut [f32], channels: usize, side: usize) {
    mirror_rows(&mut img[..channels * side * side], side);
}

/// Mirrors each row of a planar image whose rows are `width` values long (any height).
pub fn mirror_rows(img: &mut [f32], width: usize) {
    for row in img.chunks_exact_mut(width) {
        row.reverse();
    }
}

/// Resamples the image through an affine map from output to input coordinates (pixel centres),
/// bilinearly, clamping at the border.
fn resample(img: &[f32], channels: usize, side: usize, map: impl Fn(f32, f32) -> (f32, f32)) -> Vec<f32> {
    let s = side;
    let mut out = vec![0f32; img.len()];
    let max = (s - 1) as f32;
    for y in 0..s {
        for x in 0..s {
            let (sx, sy) = map(x as f32, y as f32);
            let (sx, sy) = (sx.clamp(0.0, max), sy.clamp(0.0, max));
            let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
            let (x1, y1) = ((x0 + 1).min(s - 1), (y0 + 1).min(s - 1));
            let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
            for c in 0..channels {
                let p = &img[c * s * s..(c + 1) * s * s];
                let top = p[y0 * s + x0] * (1.0 - fx) + p[y0 * s + x1] * fx;
                let bottom = p[y1 * s + x0] * (1.0 - fx) + p[y1 * s + x1] * fx;
                out[c * s * s + y * s + x] = top * (1.0 - fy) + bottom * fy;
            }
        }
    }
    out
}

/// Zooms in: the window of side `scale * S` at fractional offset (ox, oy) in [0, 1] of the
/// free room is stretched back to S x S.
pub fn scale_crop(img: &[f32], channels: usize, side: usize, scale: f32, ox: f32, oy: f32) -> Vec<f32> {
    let win = scale * side as f32;
    let (x0, y0) = (ox * (side as f32 - win), oy * (side as f32 - win));
    resample(img, channels, side, |x, y| (x0 + (x + 0.5) * scale - 0.5, y0 + (y + 0.5) * scale - 0.5))
}

/// Rotates about the centre by `degrees` (counter-clockwise on screen).
pub fn rotate(img: &[f32], channels: usize, side: usize, degrees: f32) -> Vec<f32> {
    let c = (side as f32 - 1.0) / 2.0;
    let (sin, cos) = degrees.to_radians().sin_cos();
    resample(img, channels, side, |x, y| {
        let (dx, dy) = (x - c, y - c);
        (c + cos * dx - sin * dy, c + sin * dx + cos * dy)
    })
}

/// Applies the configured augmentations with draws from `rng`.
pub fn augment(img: Vec<f32>, channels: usize, side: usize, cfg: &AugmentConfig, rng: &mut impl Rng) -> Vec<f32> {
    let mut img = img;
    if cfg.hflip > 0.0 && rng.random_bool(cfg.hflip) {
        hflip(&mut img, channels, side);
    }
    if cfg.scale_crop > 0.0 && rng.random_bool(cfg.scale_crop) {
        let scale = rng.random_range(cfg.scale_min..=1.0) as f32;
        img = scale_crop(&img, channels, side, scale, rng.random(), rng.random());
    }
    if cfg.rotate > 0.0 && cfg.rotate_degrees > 0.0 && rng.random_bool(cfg.rotate) {
        let deg = rng.random_range(-cfg.rotate_degrees..=cfg.rotate_degrees) as f32;
        img = rotate(&img, channels, side, deg);
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(side: usize) -> Vec<f32> {
        (0..side * side).map(|i| (i % side) as f32).collect()
    }

    #[test]
    fn hflip_mirrors_rows_and_twice_is_identity() {
        let img = ramp(4);
        let mut f = img.clone();
        hflip(&mut f, 1, 4);
        assert_eq!(&f[..4], &[3.0, 2.0, 1.0, 0.0]);
        hflip(&mut f, 1, 4);
        assert_eq!(f, img);
    }

    #[test]
    fn scale_one_is_identity_and_zoom_narrows_the_range() {
        let img = ramp(8);
        let same = scale_crop(&img, 1, 8, 1.0, 0.5, 0.5);
        assert!(same.iter().zip(&img).all(|(a, b)| (a - b).abs() < 1e-5));
        let zoomed = scale_crop(&img, 1, 8, 0.5, 0.0, 0.0);
        // The left half of the ramp (0..3.5) now spans the whole row.
        assert!(zoomed[7] < 4.0 && zoomed[7] > 3.0, "{:?}", &zoomed[..8]);
    }

    #[test]
    fn rotation_by_90_turns_columns_into_rows() {
        let img = ramp(5); // value = x
        let r = rotate(&img, 1, 5, 90.0);
        // After a 90 degree turn the value depends on y only.
        for y in 0..5 {
            let row = &r[y * 5..(y + 1) * 5];
            assert!(row.iter().all(|v| (v - row[0]).abs() < 1e-4), "row {y}: {row:?}");
        }
        let zero = rotate(&img, 1, 5, 0.0);
        assert!(zero.iter().zip(&img).all(|(a, b)| (a - b).abs() < 1e-5));
    }

    #[test]
    fn augment_is_repeatable_for_a_seed() {
        use difforge_core::{rng_for, Stream};
        let cfg = AugmentConfig { hflip: 0.5, scale_crop: 0.5, scale_min: 0.7, rotate: 0.5, rotate_degrees: 15.0 };
        let img: Vec<f32> = (0..3 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
        let a = augment(img.clone(), 3, 8, &cfg, &mut rng_for(5, Stream::Augment, 0));
        let b = augment(img.clone(), 3, 8, &cfg, &mut rng_for(5, Stream::Augment, 0));
        assert_eq!(a, b);
    }
}
