//! Generated images out of tensors: planar floats, PNG grids and one PNG per image.

use difforge_data::{save_png, PlanarImages};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Planar floats of a (N, C, H, W) tensor.
pub fn to_vec(images: &Tensor) -> Result<Vec<f32>, tch::TchError> {
    let flat = images.to_kind(Kind::Float).contiguous().view([-1]);
    Vec::<f32>::try_from(&flat)
}

fn planar_parts(images: &Tensor) -> std::io::Result<(Vec<f32>, usize, usize, usize)> {
    let (n, c, s, _) = images.size4().map_err(std::io::Error::other)?;
    let data = to_vec(images).map_err(std::io::Error::other)?;
    Ok((data, n as usize, c as usize, s as usize))
}

pub fn save_grid(images: &Tensor, columns: usize, path: &Path) -> std::io::Result<()> {
    let (data, count, channels, side) = planar_parts(images)?;
    let planar = PlanarImages { data: &data, count, channels, side };
    save_png(&planar.grid(columns), path)
}

pub fn save_each(images: &Tensor, dir: &Path, prefix: &str) -> std::io::Result<Vec<PathBuf>> {
    let (data, count, channels, side) = planar_parts(images)?;
    let planar = PlanarImages { data: &data, count, channels, side };
    (0..count)
        .map(|i| {
            let path = dir.join(format!("{prefix}{i:05}.png"));
            save_png(&planar.image(i), &path).map(|_| path)
        })
        .collect()
}
