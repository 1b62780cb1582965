//! Writing images: planar floats in [-1, 1] to PNG, one file each or a grid.

use image::{DynamicImage, GrayImage, RgbImage};
use std::path::Path;

/// Images in planar layout (N x C x S x S), values in [-1, 1].
#[derive(Debug, Clone, Copy)]
pub struct PlanarImages<'a> {
    pub data: &'a [f32],
    pub count: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

fn to_u8(v: f32) -> u8 {
    ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8
}

impl PlanarImages<'_> {
    pub fn image(&self, i: usize) -> DynamicImage {
        let (c, h, w) = (self.channels, self.height, self.width);
        let img = &self.data[i * c * h * w..(i + 1) * c * h * w];
        let px = |ch: usize, x: u32, y: u32| to_u8(img[ch * h * w + y as usize * w + x as usize]);
        if c == 1 {
            DynamicImage::ImageLuma8(GrayImage::from_fn(w as u32, h as u32, |x, y| image::Luma([px(0, x, y)])))
        } else {
            DynamicImage::ImageRgb8(RgbImage::from_fn(w as u32, h as u32, |x, y| image::Rgb([px(0, x, y), px(1, x, y), px(2, x, y)])))
        }
    }

    /// All images tiled `columns` wide with a 2-pixel border.
    pub fn grid(&self, columns: usize) -> DynamicImage {
        let columns = columns.clamp(1, self.count.max(1));
        let rows = self.count.div_ceil(columns);
        let (tile_h, tile_w, pad) = (self.height as u32, self.width as u32, 2u32);
        let (w, h) = (columns as u32 * (tile_w + pad) + pad, rows as u32 * (tile_h + pad) + pad);
        let mut canvas = RgbImage::from_pixel(w, h, image::Rgb([40, 40, 40]));
        for i in 0..self.count {
            let tile = self.image(i).to_rgb8();
            let (x, y) = ((i % columns) as u32 * (tile_w + pad) + pad, (i / columns) as u32 * (tile_h + pad) + pad);
            image::imageops::replace(&mut canvas, &tile, i64::from(x), i64::from(y));
        }
        DynamicImage::ImageRgb8(canvas)
    }
}

/// Encodes as PNG and writes atomically.
pub fn save_png(img: &DynamicImage, path: &Path) -> std::io::Result<()> {
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).map_err(std::io::Error::other)?;
    difforge_core::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_has_expected_size_and_values() {
        let data = vec![-1.0f32, 1.0, 1.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];
        let imgs = PlanarImages { data: &data, count: 3, channels: 1, height: 2, width: 2 };
        assert_eq!(imgs.image(0).to_luma8().into_raw(), vec![0, 255, 255, 0]);
        let g = imgs.grid(2);
        assert_eq!((g.width(), g.height()), (2 * 4 + 2, 2 * 4 + 2));
    }
}
