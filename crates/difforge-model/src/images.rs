//! Generated images out of tensors: planar floats, PNG grids and one PNG per image.

use difforge_data::{save_png, PlanarImages};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Planar floats of a (N, C, H, W) tensor.
pub fn to_vec(images: &Tensor) -> Result<Vec<f32>, tch::TchError> {
    let flat = images.to_kind(Kind::Float).contiguous().view([-1]);
    Vec::<f32>::try_from(&flat)
}

/// Planar floats of (N, C, H, W) images and their (N, C, H, W) as sizes.
fn planar_parts(images: &Tensor) -> std::io::Result<(Vec<f32>, [usize; 4])> {
    let (n, c, h, w) = images.size4().map_err(std::io::Error::other)?;
    let data = to_vec(images).map_err(std::io::Error::other)?;
    Ok((data, [n as usize, c as usize, h as usize, w as usize]))
}

pub fn save_grid(images: &Tensor, columns: usize, path: &Path) -> std::io::Result<()> {
    let (data, [count, channels, height, width]) = planar_parts(images)?;
    let planar = PlanarImages { data: &data, count, channels, height, width };
    save_png(&planar.grid(columns), path)
}

pub fn save_each(images: &Tensor, dir: &Path, prefix: &str) -> std::io::Result<Vec<PathBuf>> {
    let (data, [count, channels, height, width]) = planar_parts(images)?;
    let planar = PlanarImages { data: &data, count, channels, height, width };
    (0..count)
        .map(|i| {
            let path = dir.join(format!("{prefix}{i:05}.png"));
            save_png(&planar.image(i), &path).map(|_| path)
        })
        .collect()
}

/// [`save_each`] with UTF-8 text chunks per image (`text(i)`), as RGB PNGs.
pub fn save_each_with_text(images: &Tensor, dir: &Path, prefix: &str, text: impl Fn(usize) -> Vec<(&'static str, String)>) -> std::io::Result<Vec<PathBuf>> {
    let (data, [count, channels, height, width]) = planar_parts(images)?;
    let planar = PlanarImages { data: &data, count, channels, height, width };
    (0..count)
        .map(|i| {
            let path = dir.join(format!("{prefix}{i:05}.png"));
            let rgb = planar.image(i).to_rgb8();
            difforge_core::write_atomic(&path, &encode_rgb_with_text(rgb.width(), rgb.height(), rgb.as_raw(), &text(i))?).map(|_| path)
        })
        .collect()
}

/// Writes image `i` of `images` (N, 3, H, W) in [-1, 1] as an RGB PNG with UTF-8 text chunks
/// (iTXt, keyword then text), atomically. Text-to-image outputs carry their prompt and
/// settings this way, as the webui's `parameters` chunk does.
pub fn save_png_with_text(images: &Tensor, i: i64, text: &[(&str, String)], path: &Path) -> std::io::Result<()> {
    let image = images.get(i);
    let (c, h, w) = image.size3().map_err(std::io::Error::other)?;
    if c != 3 {
        return Err(std::io::Error::other(format!("expected an RGB image, got {c} channels")));
    }
    let pixels = ((image.to_kind(Kind::Float).clamp(-1.0, 1.0) + 1.0) * 127.5).round().to_kind(Kind::Uint8).permute([1, 2, 0]).contiguous();
    let bytes = Vec::<u8>::try_from(&pixels.view([-1])).map_err(std::io::Error::other)?;
    difforge_core::write_atomic(path, &encode_rgb_with_text(w as u32, h as u32, &bytes, text)?)
}

/// A grid of (N, C, H, W) images as [`save_grid`] draws it, with UTF-8 text chunks: what the
/// tiles are (prompts or classes, seeds, sampler settings), as a generated image carries them.
pub fn save_grid_with_text(images: &Tensor, columns: usize, text: &[(&str, String)], path: &Path) -> std::io::Result<()> {
    let (data, [count, channels, height, width]) = planar_parts(images)?;
    let planar = PlanarImages { data: &data, count, channels, height, width };
    let grid = planar.grid(columns).to_rgb8();
    difforge_core::write_atomic(path, &encode_rgb_with_text(grid.width(), grid.height(), grid.as_raw(), text)?)
}

/// An 8-bit RGB PNG with iTXt chunks (keyword, text).
fn encode_rgb_with_text(width: u32, height: u32, rgb: &[u8], text: &[(&str, String)]) -> std::io::Result<Vec<u8>> {
    let mut encoded = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut encoded, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        for (key, value) in text {
            encoder.add_itxt_chunk(key.to_string(), value.clone()).map_err(std::io::Error::other)?;
        }
        let mut writer = encoder.write_header().map_err(std::io::Error::other)?;
        writer.write_image_data(rgb).map_err(std::io::Error::other)?;
    }
    Ok(encoded)
}

/// The prompt `difforge sample` wrote into a generated PNG (its `difforge` text chunk), if the
/// file is such an image.
pub fn generated_prompt(path: &Path) -> Option<String> {
    let file = std::fs::File::open(path).ok()?;
    let reader = png::Decoder::new(std::io::BufReader::new(file)).read_info().ok()?;
    let chunk = reader.info().utf8_text.iter().find(|c| c.keyword == "difforge")?;
    let json: serde_json::Value = serde_json::from_str(&chunk.get_text().ok()?).ok()?;
    json.get("prompt")?.as_str().map(str::to_string)
}
