//! The validation loss: held-out images, each at fixed timesteps spread over the whole range
//! (a low-discrepancy sequence) with fixed noise, so the same weights always give the same
//! number. Reported overall and per timestep band, for the raw and the EMA weights.

use crate::error::ModelError;
use crate::model::{DiffusionModel, Weights};
use difforge_config::RunConfig;
use difforge_core::Stream;
use difforge_data::{Batch, ImageSet, Loader, Split};
use difforge_diffusion::noise::gaussian;
use difforge_nn::Conditioning;
use serde::Serialize;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// 1/golden ratio: consecutive multiples mod 1 fill [0, 1) evenly.
const PHI: f64 = 0.618_033_988_749_894_9;

/// Pairs evaluated per network call.
const CHUNK: i64 = 256;

pub struct Validator {
    x0: Tensor,
    cond: Conditioning,
    ts: Vec<usize>,
    eps: Tensor,
    weights: Vec<f64>,
    bands: usize,
    timesteps: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ValidationLoss {
    /// The training objective (same target and weighting) averaged over all pairs.
    pub loss: f64,
    /// The same per timestep band: band b covers timesteps [b T / bands, (b + 1) T / bands).
    pub bands: Vec<f64>,
    /// (image, timestep) pairs evaluated.
    pub pairs: usize,
}

/// The validation images of a run, centre-cropped: at most `train.val_images` of the held-out
/// split, or of `data.val_path` when a separate folder is given.
pub fn validation_batch(cfg: &RunConfig, set: &Arc<ImageSet>, split: &Split) -> Result<Option<Batch>, ModelError> {
    let limit = cfg.train.val_images;
    let (set, indices) = match &cfg.data.val_path {
        Some(path) => {
            let mut val_cfg = cfg.data.for_folder(path);
            if val_cfg.class_names.is_empty() {
                val_cfg.class_names = set.class_names.clone();
            }
            let val = Arc::new(difforge_data::source::load(&val_cfg)?);
            let n = val.len();
            (val, (0..n).take(limit).collect::<Vec<_>>())
        }
        None => (set.clone(), split.val.iter().copied().take(limit).collect()),
    };
    if indices.is_empty() {
        return Ok(None);
    }
    let loader = Loader::new(set, Vec::new(), cfg.data.image_size, cfg.data.crop, Default::default(), cfg.seed);
    Ok(Some(loader.fixed_batch(&indices)))
}

impl Validator {
    /// `batch` holds the validation images (centre-cropped); each is used `repeats` times.
    pub fn new(model: &DiffusionModel, batch: &Batch, repeats: usize, bands: usize) -> Validator {
        let cfg = model.config();
        let n = batch.size as i64;
        let m = (n as usize) * repeats;
        let t_max = cfg.diffusion.timesteps;
        let ts: Vec<usize> = (0..m).map(|k| (((k as f64 + 1.0) * PHI).fract() * t_max as f64) as usize).collect();
        let pixels = Tensor::from_slice(&batch.images).view(batch.shape());
        let x0 = model.codec().encode(&pixels).repeat_interleave_self_int(repeats as i64, 0, None);
        let [lc, lh, lw] = model.latent_shape();
        let eps = Tensor::from_slice(&gaussian(cfg.seed, Stream::Validation, 0, m * (lc * lh * lw) as usize)).view([m as i64, lc, lh, lw]);
        let labels: Vec<i64> = batch.labels.iter().flat_map(|&l| std::iter::repeat_n(l, repeats)).collect();
        let captions: Vec<Option<String>> = batch.captions.iter().flat_map(|c| std::iter::repeat_n(c.clone(), repeats)).collect();
        let weights = model.forward_process().prediction.loss_weights(model.schedule(), cfg.diffusion.min_snr_gamma, &ts);
        Validator { x0, cond: model.family().fixed_conditioning(&labels, &captions), ts, eps, weights, bands, timesteps: t_max }
    }

    pub fn pairs(&self) -> usize {
        self.ts.len()
    }

    /// Per-pair weighted losses of one set of the model's weights (in pair order).
    pub fn per_pair(&self, model: &DiffusionModel, w: Weights) -> Result<Vec<f64>, ModelError> {
        self.per_pair_in(model, w, 0..self.ts.len())
    }

    /// The weighted losses of the pairs `pairs` only (a data-parallel rank's share).
    pub fn per_pair_in(&self, model: &DiffusionModel, w: Weights, pairs: std::ops::Range<usize>) -> Result<Vec<f64>, ModelError> {
        let dev = model.device();
        let forward = model.forward_process();
        let mut out = Vec::with_capacity(self.ts.len());
        tch::no_grad(|| -> Result<(), ModelError> {
            let m = pairs.end as i64;
            let mut start = pairs.start as i64;
            while start < m {
                let len = (m - start).min(CHUNK);
                let ts = &self.ts[start as usize..(start + len) as usize];
                let x0 = self.x0.narrow(0, start, len).to_device(dev);
                let eps = self.eps.narrow(0, start, len).to_device(dev);
                let noised = forward.noise(&x0, &eps, ts, dev);
                let t = Tensor::from_slice(&ts.iter().map(|&t| t as i64).collect::<Vec<_>>()).to_device(dev);
                let cond = self.cond.narrow(start, len).to_device(dev);
                let y = model.predict(w, &noised.x_t, &t, &cond, false);
                let loss = model.config().diffusion.loss_fn().per_sample(&y, &noised.target, Kind::Double).to_device(Device::Cpu);
                out.extend(Vec::<f64>::try_from(&loss)?);
                start += len;
            }
            Ok(())
        })?;
        Ok(out.iter().zip(&self.weights[pairs]).map(|(l, w)| l * w).collect())
    }

    pub fn evaluate(&self, model: &DiffusionModel, w: Weights) -> Result<ValidationLoss, ModelError> {
        Ok(self.summarise(&self.per_pair(model, w)?))
    }

    /// The loss and its bands from the per-pair losses of every pair (in pair order).
    pub fn summarise(&self, losses: &[f64]) -> ValidationLoss {
        let mut sums = vec![0.0; self.bands];
        let mut counts = vec![0usize; self.bands];
        for (l, &t) in losses.iter().zip(&self.ts) {
            let b = t * self.bands / self.timesteps;
            sums[b] += l;
            counts[b] += 1;
        }
        ValidationLoss {
            loss: losses.iter().sum::<f64>() / losses.len().max(1) as f64,
            bands: sums.iter().zip(&counts).map(|(s, &c)| if c == 0 { f64::NAN } else { s / c as f64 }).collect(),
            pairs: losses.len(),
        }
    }
}
