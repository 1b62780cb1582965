//! Images for explanations: planar tensors to pictures, and heat maps (black, red, yellow, white).

use image::{DynamicImage, Rgb, RgbImage};
use tch::{Kind, Tensor};

/// (N, C, S, S) in [-1, 1] -> one picture per image.
pub fn pictures(images: &Tensor) -> Result<Vec<DynamicImage>, tch::TchError> {
    let (n, c, s, _) = images.size4()?;
    let data = difforge_model::images::to_vec(&images.clamp(-1.0, 1.0))?;
    let planar = difforge_data::PlanarImages { data: &data, count: n as usize, channels: c as usize, height: s as usize, width: s as usize };
    Ok((0..n as usize).map(|i| planar.image(i)).collect())
}

fn ramp(v: f32) -> Rgb<u8> {
    let v = v.clamp(0.0, 1.0);
    let r = (v * 3.0).min(1.0);
    let g = (v * 3.0 - 1.0).clamp(0.0, 1.0);
    let b = (v * 3.0 - 2.0).clamp(0.0, 1.0);
    Rgb([(r * 255.0) as u8, (g * 255.0) as u8, (b * 255.0) as u8])
}

/// A (H, W) map as a heat picture, scaled by `max` (values above it saturate).
pub fn heat(map: &Tensor, max: f64) -> Result<DynamicImage, tch::TchError> {
    let (h, w) = map.size2()?;
    let v = Vec::<f32>::try_from(&map.to_kind(Kind::Float).contiguous().view([-1]))?;
    let scale = if max > 0.0 { 1.0 / max as f32 } else { 0.0 };
    Ok(DynamicImage::ImageRgb8(RgbImage::from_fn(w as u32, h as u32, |x, y| ramp(v[(y as i64 * w + x as i64) as usize] * scale))))
}

/// Pictures tiled in rows (each row may have its own length), 2-pixel gaps, scaled up `zoom`x.
pub fn tile(rows: &[Vec<DynamicImage>], zoom: u32) -> DynamicImage {
    let cell = rows.iter().flatten().map(|i| i.width().max(i.height())).max().unwrap_or(1) * zoom;
    let cols = rows.iter().map(Vec::len).max().unwrap_or(1) as u32;
    let (w, h) = (cols * (cell + 2) + 2, rows.len() as u32 * (cell + 2) + 2);
    let mut canvas = RgbImage::from_pixel(w, h, Rgb([40, 40, 40]));
    for (r, row) in rows.iter().enumerate() {
        for (c, img) in row.iter().enumerate() {
            let big = img.resize_exact(cell, cell, image::imageops::FilterType::Nearest).to_rgb8();
            image::imageops::replace(&mut canvas, &big, i64::from(c as u32 * (cell + 2) + 2), i64::from(r as u32 * (cell + 2) + 2));
        }
    }
    DynamicImage::ImageRgb8(canvas)
}

pub fn png_bytes(img: &DynamicImage) -> Result<Vec<u8>, image::ImageError> {
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)?;
    Ok(out)
}
