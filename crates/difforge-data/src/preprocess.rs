//! Decoded image -> model-ready pixels: alpha composited on white, converted to grey or RGB,
//! padded, and resized so that the shorter side equals the model size (the crop to a square
//! happens per batch, so that random crops stay possible with a cached set); or, with aspect-ratio
//! buckets, resized to cover the image's bucket (the crop to the bucket happens per batch).

use crate::bucket::{bucket_set, place, BucketConfig, DropReason, Fit};
use crate::config::ColorMode;
use crate::pixels::Pixels;
use image::imageops::{self, FilterType};
use image::{DynamicImage, GrayImage, RgbImage};

#[derive(Debug, Clone, Copy)]
pub struct Preprocess {
    pub size: u32,
    pub color: ColorMode,
    pub pad: u32,
    /// Aspect-ratio buckets (`[data.buckets]`): the image is resized to cover its bucket instead.
    pub buckets: Option<BucketConfig>,
}

impl Preprocess {
    /// The image as [`Preprocess::apply`] makes it, or with buckets, padded and resized to
    /// cover its bucket (Lanczos3, as [`crate::bucket::resize_and_crop`]) with its [`Fit`]; an
    /// image without a bucket (too small with `no_upscale`) gives the reason.
    ///
    /// With a `mask` (the image's size, 255 = counts fully in the loss), it goes through the
    /// same padding and resizing (per channel, so exactly as the image's own channels) and is
    /// stored as one more channel of the pixels.
    pub fn prepare(&self, img: &DynamicImage, mask: Option<&GrayImage>) -> Result<(Pixels, Option<Fit>), DropReason> {
        let (pixels, fit) = self.prepare_image(img)?;
        let Some(mask) = mask else { return Ok((pixels, fit)) };
        let mask = pad(mask, self.pad);
        let mask = match &fit {
            Some(f) if mask.dimensions() != f.resized => imageops::resize(&mask, f.resized.0, f.resized.1, FilterType::Lanczos3),
            Some(_) => mask,
            None => resize_shorter(&mask, self.size),
        };
        Ok((pixels.with_mask(&mask), fit))
    }

    fn prepare_image(&self, img: &DynamicImage) -> Result<(Pixels, Option<Fit>), DropReason> {
        let Some(cfg) = &self.buckets else { return Ok((self.apply(img), None)) };
        let rgb = pad(&composite_on_white(img), self.pad);
        let set = if cfg.no_upscale { Vec::new() } else { bucket_set(cfg) };
        let fit = place(cfg, &set, rgb.width(), rgb.height())?;
        let (w, h) = fit.resized;
        let rgb = if rgb.dimensions() == fit.resized { rgb } else { imageops::resize(&rgb, w, h, FilterType::Lanczos3) };
        let pixels = match self.color {
            ColorMode::Rgb => Pixels { width: w, height: h, channels: 3, data: rgb.into_raw() },
            ColorMode::Grey => Pixels { width: w, height: h, channels: 1, data: rgb.pixels().map(|p| luma(p.0)).collect() },
        };
        Ok((pixels, Some(fit)))
    }

    pub fn apply(&self, img: &DynamicImage) -> Pixels {
        let rgb = composite_on_white(img);
        match self.color {
            ColorMode::Grey => {
                let grey = GrayImage::from_fn(rgb.width(), rgb.height(), |x, y| {
                    let p = rgb.get_pixel(x, y).0;
                    image::Luma([luma(p)])
                });
                let grey = resize_shorter(&pad(&grey, self.pad), self.size);
                Pixels { width: grey.width(), height: grey.height(), channels: 1, data: grey.into_raw() }
            }
            ColorMode::Rgb => {
                let rgb = resize_shorter(&pad(&rgb, self.pad), self.size);
                Pixels { width: rgb.width(), height: rgb.height(), channels: 3, data: rgb.into_raw() }
            }
        }
    }
}

/// ITU-R BT.601 luma, as PIL's "L" conversion uses.
fn luma([r, g, b]: [u8; 3]) -> u8 {
    let y = 0.299 * f32::from(r) + 0.587 * f32::from(g) + 0.114 * f32::from(b);
    y.round().clamp(0.0, 255.0) as u8
}

/// Transparent pixels become white, so icons and emoji keep their look on a plain background.
pub(crate) fn composite_on_white(img: &DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let rgba = img.to_rgba8();
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let a = f32::from(a) / 255.0;
        let blend = |c: u8| (f32::from(c) * a + 255.0 * (1.0 - a)).round() as u8;
        image::Rgb([blend(r), blend(g), blend(b)])
    })
}

fn pad<P: image::Pixel<Subpixel = u8> + 'static>(img: &image::ImageBuffer<P, Vec<u8>>, border: u32) -> image::ImageBuffer<P, Vec<u8>> {
    if border == 0 {
        return img.clone();
    }
    let mut out = image::ImageBuffer::new(img.width() + 2 * border, img.height() + 2 * border);
    imageops::replace(&mut out, img, i64::from(border), i64::from(border));
    out
}

/// Stored pixels resized so that the shorter side is `size` (as [`Preprocess::apply`] would
/// have made them): a bucketed image as a square crop of the model size needs.
pub(crate) fn shorter_side_to(px: &Pixels, size: u32) -> Pixels {
    fn resized<P: image::Pixel<Subpixel = u8> + 'static>(px: &Pixels, size: u32) -> (u32, u32, Vec<u8>) {
        let img = image::ImageBuffer::<P, Vec<u8>>::from_raw(px.width, px.height, px.data.clone()).expect("Pixels hold width x height x channels bytes");
        let out = resize_shorter(&img, size);
        (out.width(), out.height(), out.into_raw())
    }
    // A mask travels as the alpha-like last channel.
    let (width, height, data) = match px.channels {
        1 => resized::<image::Luma<u8>>(px, size),
        2 => resized::<image::LumaA<u8>>(px, size),
        3 => resized::<image::Rgb<u8>>(px, size),
        _ => resized::<image::Rgba<u8>>(px, size),
    };
    Pixels { width, height, channels: px.channels, data }
}

fn resize_shorter<P: image::Pixel<Subpixel = u8> + 'static>(img: &image::ImageBuffer<P, Vec<u8>>, size: u32) -> image::ImageBuffer<P, Vec<u8>> {
    let (w, h) = img.dimensions();
    let short = w.min(h);
    if short == size {
        return img.clone();
    }
    let scale = f64::from(size) / f64::from(short);
    let nw = ((f64::from(w) * scale).round() as u32).max(size);
    let nh = ((f64::from(h) * scale).round() as u32).max(size);
    // Triangle (bilinear with support scaled to the ratio) averages properly when shrinking.
    imageops::resize(img, nw, nh, FilterType::Triangle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgba, RgbaImage};

    #[test]
    fn transparent_becomes_white_and_grey_has_one_channel() {
        let mut img = RgbaImage::new(4, 6);
        img.put_pixel(0, 0, Rgba([0, 0, 0, 255]));
        let p = Preprocess { size: 4, color: ColorMode::Grey, pad: 0, buckets: None }.apply(&DynamicImage::ImageRgba8(img));
        assert_eq!((p.width, p.height, p.channels), (4, 6, 1));
        assert_eq!(p.get(0, 0, 0), 0);
        assert_eq!(p.get(3, 5, 0), 255);
    }

    #[test]
    fn shorter_side_is_resized_and_aspect_kept() {
        let img = DynamicImage::ImageRgb8(RgbImage::new(40, 20));
        let p = Preprocess { size: 10, color: ColorMode::Rgb, pad: 0, buckets: None }.apply(&img);
        assert_eq!((p.width, p.height, p.channels), (20, 10, 3));
    }

    #[test]
    fn pad_adds_black_border() {
        let img = DynamicImage::ImageLuma8(GrayImage::from_pixel(2, 2, image::Luma([255])));
        let p = Preprocess { size: 4, color: ColorMode::Grey, pad: 1, buckets: None }.apply(&img);
        assert_eq!((p.width, p.height), (4, 4));
        assert_eq!(p.get(0, 0, 0), 0);
        assert_eq!(p.get(1, 1, 0), 255);
    }
}
