//! Prior preservation (DreamBooth, Ruiz et al. 2023): images the base model generates for its
//! own classes (or, for a text model, for the class prompt) are mixed into every fine-tuning step, so the model keeps what it knew while it
//! learns the new data. The images are generated once, deterministically, from the base, and
//! kept in the run folder (`RUN/class_images/`, as diffusers' `class_data_dir`) where a user can
//! look at them and a resumed run reads them back instead of generating them again.

use crate::error::TrainError;
use difforge_config::RunConfig;
use difforge_core::{derive_seed, Stream};
use difforge_data::{AugmentConfig, CropMode, ImageSet, Loader, Pixels};
use difforge_model::generate::{generate, preview_conditions};
use difforge_model::images::to_vec;
use difforge_model::{checkpoint, Condition, DiffusionModel, GenerateSpec, Weights};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::Device;

/// A loader over the prior images: `prior_per_class` base samples of every base class, or of
/// the class prompt for a text model. The base is `finetune.from`, or for a family with its own
/// published weights (Stable Diffusion) the run's model before training (adapters at zero).
///
/// `run_dir` (None on the ranks of a data-parallel run other than the first) keeps them in
/// `class_images/`, or already holds them.
pub fn prior_loader(cfg: &RunConfig, run_dir: Option<&Path>, device: Device) -> Result<Option<Loader>, TrainError> {
    if !cfg.finetune.prior_preservation {
        return Ok(None);
    }
    let (base, sampler) = match &cfg.finetune.from {
        Some(from) => {
            let dir = checkpoint::resolve(from)?;
            let base_cfg = checkpoint::read_config(&dir)?;
            (checkpoint::load_model(&dir, &base_cfg, device)?, base_cfg.sample)
        }
        None => (DiffusionModel::new(cfg, device)?, cfg.sample.clone()),
    };
    let kind = base.family().condition_kind();
    let seed = derive_seed(cfg.seed, Stream::Sample, 1) >> 16;
    let (conditions, seeds) = match &cfg.finetune.class_prompt {
        Some(prompt) => {
            let n = cfg.finetune.prior_per_class;
            (vec![Condition::Text(prompt.clone()); n], (0..n as u64).map(|k| seed + k).collect())
        }
        None => preview_conditions(base.family(), cfg.finetune.prior_per_class, seed),
    };
    let labels: Vec<Option<usize>> = conditions.iter().map(|c| if let Condition::Class(k) = c { Some(*k as usize) } else { None }).collect();
    let captions: Vec<Option<String>> = conditions.iter().map(|c| if let Condition::Text(p) = c { Some(p.clone()) } else { None }).collect();
    let [c, s, _] = base.family().pixel_shape();
    let (c, s) = (c as usize, s as usize);
    let dir = run_dir.map(|d| d.join(CLASS_DIR));
    let record = ClassImages { seeds: seeds.clone(), conditions: conditions.iter().map(|c| format!("{c:?}")).collect(), channels: c, size: s };
    let pixels = match dir.as_deref().and_then(|d| record.read_saved(d)) {
        Some(pixels) => {
            tracing::info!("prior preservation: the {} class images of {}", pixels.len(), dir.as_deref().unwrap_or(Path::new("")).display());
            pixels
        }
        None => {
            tracing::info!("prior preservation: generating {} class images with the base model", seeds.len());
            let spec = GenerateSpec {
                conditions,
                seeds,
                sampler: &sampler,
                weights: Weights::Ema,
                max_batch: 256,
                fixed_batch: false,
                negatives: Vec::new(),
                size: None,
            };
            let images = to_vec(&generate(&base, &spec)?)?;
            let pixels: Vec<Pixels> = images.chunks(c * s * s).map(|img| interleaved(img, c, s)).collect();
            if let Some(dir) = &dir {
                record.save(dir, &pixels, &captions)?;
                tracing::info!("prior preservation: class images in {}", dir.display());
            }
            pixels
        }
    };
    let mut set = ImageSet { class_names: (0..kind.classes().unwrap_or(0)).map(|i| i.to_string()).collect(), ..Default::default() };
    for (i, image) in pixels.into_iter().enumerate() {
        set.pixels.push(image);
        set.labels.push(labels[i]);
        set.captions.push(captions[i].clone());
        set.ids.push(format!("prior/{i}"));
    }
    let n = set.len();
    Ok(Some(Loader::new(Arc::new(set), (0..n).collect(), s as u32, CropMode::Center, AugmentConfig::default(), derive_seed(cfg.seed, Stream::Shuffle, 1))))
}

/// Where a run keeps its class images (diffusers' `class_data_dir`): one PNG each, a caption
/// `.txt` each for a text model, and `class_images.json` saying what made them.
pub const CLASS_DIR: &str = "class_images";
const RECORD_FILE: &str = "class_images.json";

/// What the class images of a run are: reused (by a resumed run, or a rerun into the same
/// folder) only when the record is the same and every image reads back whole.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct ClassImages {
    seeds: Vec<u64>,
    conditions: Vec<String>,
    channels: usize,
    size: usize,
}

impl ClassImages {
    fn png(dir: &Path, i: usize) -> PathBuf {
        dir.join(format!("{i:05}.png"))
    }

    /// The saved images, if `dir` holds exactly these.
    fn read_saved(&self, dir: &Path) -> Option<Vec<Pixels>> {
        let saved: ClassImages = serde_json::from_slice(&std::fs::read(dir.join(RECORD_FILE)).ok()?).ok()?;
        if saved != *self {
            return None;
        }
        (0..self.seeds.len())
            .map(|i| {
                let image = image::open(ClassImages::png(dir, i)).ok()?;
                let data = if self.channels == 1 { image.to_luma8().into_raw() } else { image.to_rgb8().into_raw() };
                let whole = image.width() as usize == self.size && image.height() as usize == self.size && data.len() == self.channels * self.size * self.size;
                whole.then_some(Pixels { width: self.size as u32, height: self.size as u32, channels: self.channels as u32, data })
            })
            .collect()
    }

    /// Writes the images (the record last, so a half-written folder is never taken as whole).
    fn save(&self, dir: &Path, pixels: &[Pixels], captions: &[Option<String>]) -> Result<(), TrainError> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        for (i, p) in pixels.iter().enumerate() {
            let image = match p.channels {
                1 => image::GrayImage::from_raw(p.width, p.height, p.data.clone()).map(image::DynamicImage::ImageLuma8),
                _ => image::RgbImage::from_raw(p.width, p.height, p.data.clone()).map(image::DynamicImage::ImageRgb8),
            };
            let path = ClassImages::png(dir, i);
            let image = image.ok_or_else(|| TrainError::Other(format!("class image {i}: {} bytes for {}x{}", p.data.len(), p.width, p.height)))?;
            difforge_data::save_png(&image, &path).map_err(|e| TrainError::io(&path, e))?;
            if let Some(caption) = &captions[i] {
                let path = path.with_extension("txt");
                difforge_core::write_atomic(&path, caption.as_bytes()).map_err(|e| TrainError::io(&path, e))?;
            }
        }
        let record = serde_json::to_vec_pretty(self).map_err(|e| TrainError::Other(e.to_string()))?;
        difforge_core::write_atomic(&dir.join(RECORD_FILE), &record).map_err(|e| TrainError::io(dir.join(RECORD_FILE), e))
    }
}

/// Planar floats in [-1, 1] of one image -> interleaved bytes, as every image set stores pixels.
fn interleaved(planar: &[f32], c: usize, s: usize) -> Pixels {
    let mut data = vec![0u8; c * s * s];
    for ch in 0..c {
        for p in 0..s * s {
            data[p * c + ch] = ((planar[ch * s * s + p].clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
        }
    }
    Pixels { width: s as u32, height: s as u32, channels: c as u32, data }
}
