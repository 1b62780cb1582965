//! Generating images from a model: the one place that turns (classes, seeds, sampler) into
//! images, used by training previews, `difforge sample` and the sample judge.
//! Image k of a request with seed S draws its noise from seed S + k.

use crate::model::DiffusionModel;
use difforge_data::{save_png, PlanarImages};
use difforge_diffusion::{sample, NoiseSource, SampleRequest, SamplerConfig};
use std::path::Path;
use tch::{Device, Kind, Tensor};

pub struct GenerateSpec<'a> {
    /// One class per image (None: unconditional).
    pub classes: Option<Vec<i64>>,
    /// One noise seed per image.
    pub seeds: Vec<u64>,
    pub sampler: &'a SamplerConfig,
    pub use_ema: bool,
    /// Largest batch sent through the network at once.
    pub max_batch: usize,
    /// Pad every chunk to exactly `max_batch` images. libtorch's CPU kernels give results that
    /// differ in the last bits between batch sizes (not between neighbours at one size), so a
    /// fixed size makes each image independent of what it was batched with: the server relies
    /// on this to give the same bytes for the same request and seed.
    pub fixed_batch: bool,
}

/// Images (N, C, S, S) on the CPU, clamped to [-1, 1].
pub fn generate(model: &DiffusionModel, spec: &GenerateSpec) -> Tensor {
    let c = &model.config;
    let shape = [c.model.in_channels, c.model.image_size, c.model.image_size];
    let denoiser = model.denoiser(spec.use_ema);
    let mut parts = Vec::new();
    let chunk = spec.max_batch.max(1);
    for (chunk_index, seeds) in spec.seeds.chunks(chunk).enumerate() {
        let offset = chunk_index * chunk;
        let real = seeds.len();
        let mut seeds = seeds.to_vec();
        let mut classes = spec.classes.as_ref().map(|cl| cl[offset..offset + real].to_vec());
        if spec.fixed_batch {
            // Padding: copies of the first image, dropped below.
            seeds.resize(chunk, seeds[0]);
            if let Some(c) = classes.as_mut() {
                c.resize(chunk, c[0]);
            }
        }
        let classes = classes.map(|c| Tensor::from_slice(&c).to_device(model.device));
        let noise = NoiseSource::new(seeds, shape, model.device);
        let req = SampleRequest {
            schedule: &model.schedule,
            prediction: c.diffusion.prediction,
            sampler: spec.sampler,
            classes,
            null_class: c.model.null_class(),
            noise: &noise,
        };
        parts.push(sample(&denoiser, &req, None).narrow(0, 0, real as i64).clamp(-1.0, 1.0).to_device(Device::Cpu));
    }
    Tensor::cat(&parts, 0)
}

/// `per_class` images of every class (row by row), or `per_class` x 8 unconditional ones.
pub fn class_grid_spec(num_classes: i64, per_class: usize, seed: u64) -> (Option<Vec<i64>>, Vec<u64>) {
    if num_classes == 0 {
        let n = per_class * 8;
        return (None, (0..n as u64).map(|k| seed + k).collect());
    }
    let classes: Vec<i64> = (0..num_classes).flat_map(|c| std::iter::repeat_n(c, per_class)).collect();
    let seeds = (0..classes.len() as u64).map(|k| seed + k).collect();
    (Some(classes), seeds)
}

/// Planar floats of a (N, C, S, S) tensor.
pub fn to_vec(images: &Tensor) -> Vec<f32> {
    let flat = images.to_kind(Kind::Float).contiguous().view([-1]);
    Vec::<f32>::try_from(&flat).unwrap_or_default()
}

pub fn save_grid(images: &Tensor, columns: usize, path: &Path) -> std::io::Result<()> {
    let (n, c, s, _) = images.size4().map_err(std::io::Error::other)?;
    let data = to_vec(images);
    let planar = PlanarImages { data: &data, count: n as usize, channels: c as usize, side: s as usize };
    save_png(&planar.grid(columns), path)
}

pub fn save_each(images: &Tensor, dir: &Path, prefix: &str) -> std::io::Result<Vec<std::path::PathBuf>> {
    let (n, c, s, _) = images.size4().map_err(std::io::Error::other)?;
    let data = to_vec(images);
    let planar = PlanarImages { data: &data, count: n as usize, channels: c as usize, side: s as usize };
    (0..n as usize)
        .map(|i| {
            let path = dir.join(format!("{prefix}{i:05}.png"));
            save_png(&planar.image(i), &path).map(|_| path)
        })
        .collect()
}
