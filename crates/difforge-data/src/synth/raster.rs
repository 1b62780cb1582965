//! Drawing one shape: its exact outline (centre and half-extent, in pixels), the fraction of each
//! pixel it covers (4x4 supersampling, so edges are anti-aliased), and the image. The judge renders
//! the same outlines as templates, so the geometry lives here once.

use crate::synth::attributes::Kind;
use image::{Rgb, RgbImage};

/// Samples per pixel side.
const SUPERSAMPLE: usize = 4;

/// Where and how big a shape is, in pixels: the centre of its bounding box and half its side.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    pub cx: f64,
    pub cy: f64,
    pub half_extent: f64,
}

/// Whether the point (x, y) lies inside the shape. Triangles point up; nothing is rotated, which
/// is what lets the judge tell a square from a diamond.
pub fn contains(kind: Kind, p: Placement, x: f64, y: f64) -> bool {
    let (dx, dy, r) = (x - p.cx, y - p.cy, p.half_extent);
    match kind {
        Kind::Circle => dx * dx + dy * dy <= r * r,
        Kind::Square => dx.abs() <= r && dy.abs() <= r,
        Kind::Diamond => dx.abs() + dy.abs() <= r,
        Kind::Triangle => dy.abs() <= r && dx.abs() <= (dy + r) / 2.0,
    }
}

/// The shape's area over its half-extent squared.
pub fn area_factor(kind: Kind) -> f64 {
    match kind {
        Kind::Circle => std::f64::consts::PI,
        Kind::Square => 4.0,
        Kind::Diamond | Kind::Triangle => 2.0,
    }
}

/// How far below the bounding box centre the shape's centroid lies, over its half-extent (a
/// triangle's centroid is a third of the way up from its base).
pub fn centroid_offset(kind: Kind) -> f64 {
    match kind {
        Kind::Triangle => 1.0 / 3.0,
        _ => 0.0,
    }
}

/// The covered fraction of each pixel of the `width` x `height` window whose top left pixel is
/// (x0, y0), row by row.
pub fn coverage(kind: Kind, p: Placement, x0: usize, y0: usize, width: usize, height: usize) -> Vec<f32> {
    let step = 1.0 / SUPERSAMPLE as f64;
    let mut out = Vec::with_capacity(width * height);
    for y in y0..y0 + height {
        for x in x0..x0 + width {
            let mut inside = 0;
            for sy in 0..SUPERSAMPLE {
                for sx in 0..SUPERSAMPLE {
                    let (px, py) = (x as f64 + (sx as f64 + 0.5) * step, y as f64 + (sy as f64 + 0.5) * step);
                    inside += usize::from(contains(kind, p, px, py));
                }
            }
            out.push(inside as f32 / (SUPERSAMPLE * SUPERSAMPLE) as f32);
        }
    }
    out
}

/// The pixel window (x0, y0, width, height) of a `side` x `side` image that the shape can touch.
pub fn window(p: Placement, side: usize) -> (usize, usize, usize, usize) {
    let lo = |c: f64| ((c - p.half_extent).floor().max(0.0) as usize).min(side);
    let hi = |c: f64| ((c + p.half_extent).ceil().max(0.0) as usize + 1).min(side);
    let (x0, y0) = (lo(p.cx), lo(p.cy));
    (x0, y0, hi(p.cx).saturating_sub(x0), hi(p.cy).saturating_sub(y0))
}

/// A `side` x `side` image of the shape in `fg` on `bg`, edges blended by coverage.
pub fn draw(kind: Kind, p: Placement, side: usize, fg: [u8; 3], bg: [u8; 3]) -> RgbImage {
    let mut img = RgbImage::from_pixel(side as u32, side as u32, Rgb(bg));
    // Only the shape's window is supersampled: the rest is background.
    let (x0, y0, w, h) = window(p, side);
    let cover = coverage(kind, p, x0, y0, w, h);
    for (i, &c) in cover.iter().enumerate() {
        let mix = |ch: usize| (f32::from(bg[ch]) + (f32::from(fg[ch]) - f32::from(bg[ch])) * c).round().clamp(0.0, 255.0) as u8;
        img.put_pixel((x0 + i % w) as u32, (y0 + i / w) as u32, Rgb([mix(0), mix(1), mix(2)]));
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::attributes::Named;

    #[test]
    fn covered_area_matches_the_geometry() {
        let p = Placement { cx: 32.0, cy: 32.0, half_extent: 12.0 };
        for &kind in Kind::ALL {
            let area: f32 = coverage(kind, p, 0, 0, 64, 64).iter().sum();
            let expected = area_factor(kind) * 144.0;
            assert!((f64::from(area) - expected).abs() < 0.03 * expected, "{kind:?}: {area} vs {expected}");
        }
    }

    #[test]
    fn edges_are_anti_aliased() {
        let p = Placement { cx: 8.0, cy: 8.0, half_extent: 4.5 };
        let cover = coverage(Kind::Square, p, 0, 0, 16, 16);
        assert_eq!(cover[8 * 16 + 8], 1.0);
        assert_eq!(cover[0], 0.0);
        assert!((cover[8 * 16 + 3] - 0.5).abs() < 1e-6, "the edge pixel is half covered: {}", cover[8 * 16 + 3]);
        let img = draw(Kind::Square, p, 16, [200, 0, 0], [0, 0, 0]);
        assert_eq!(img.get_pixel(8, 8).0, [200, 0, 0]);
        assert_eq!(img.get_pixel(3, 8).0, [100, 0, 0]);
        assert_eq!(img.get_pixel(1, 1).0, [0, 0, 0]);
    }
}
