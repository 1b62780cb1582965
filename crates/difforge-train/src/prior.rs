//! Prior preservation (DreamBooth, Ruiz et al. 2023): images the base model generates for its
//! own classes (or, for a text model, for the class prompt) are mixed into every fine-tuning step, so the model keeps what it knew while it
//! learns the new data. The images are generated once, deterministically, from the base.

use crate::error::TrainError;
use difforge_config::RunConfig;
use difforge_core::{derive_seed, Stream};
use difforge_data::{AugmentConfig, CropMode, ImageSet, Loader, Pixels};
use difforge_model::generate::{generate, preview_conditions};
use difforge_model::images::to_vec;
use difforge_model::{checkpoint, Condition, DiffusionModel, GenerateSpec, Weights};
use std::sync::Arc;
use tch::Device;

/// A loader over the prior images: `prior_per_class` base samples of every base class, or of
/// the class prompt for a text model. The base is `finetune.from`, or for a family with its own
/// published weights (Stable Diffusion) the run's model before training (adapters at zero).
pub fn prior_loader(cfg: &RunConfig, device: Device) -> Result<Option<Loader>, TrainError> {
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
    tracing::info!("prior preservation: generating {} images with the base model", seeds.len());
    let labels: Vec<Option<usize>> = conditions.iter().map(|c| if let Condition::Class(k) = c { Some(*k as usize) } else { None }).collect();
    let captions: Vec<Option<String>> = conditions.iter().map(|c| if let Condition::Text(p) = c { Some(p.clone()) } else { None }).collect();
    let spec =
        GenerateSpec { conditions, seeds, sampler: &sampler, weights: Weights::Ema, max_batch: 256, fixed_batch: false, negatives: Vec::new(), size: None };
    let images = to_vec(&generate(&base, &spec)?)?;
    let [c, s, _] = base.family().pixel_shape();
    let (c, s) = (c as usize, s as usize);
    let mut set = ImageSet { class_names: (0..kind.classes().unwrap_or(0)).map(|i| i.to_string()).collect(), ..Default::default() };
    for (i, img) in images.chunks(c * s * s).enumerate() {
        // Planar floats -> interleaved bytes, as every image set stores pixels.
        let mut data = vec![0u8; c * s * s];
        for ch in 0..c {
            for p in 0..s * s {
                data[p * c + ch] = ((img[ch * s * s + p].clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
            }
        }
        set.pixels.push(Pixels { width: s as u32, height: s as u32, channels: c as u32, data });
        set.labels.push(labels[i]);
        set.captions.push(captions[i].clone());
        set.ids.push(format!("prior/{i}"));
    }
    let n = set.len();
    Ok(Some(Loader::new(Arc::new(set), (0..n).collect(), s as u32, CropMode::Center, AugmentConfig::default(), derive_seed(cfg.seed, Stream::Shuffle, 1))))
}
