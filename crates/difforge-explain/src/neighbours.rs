//! Each sample beside its nearest training images (Euclidean distance in pixel space at the
//! model's resolution), to see whether the model copies its data.

use difforge_data::{source, Loader, Split};
use difforge_model::{DiffusionModel, ModelError};
use serde::Serialize;
use std::sync::Arc;
use tch::{Kind, Tensor};

#[derive(Serialize)]
pub struct Neighbours {
    /// Per sample: (training image id, RMS pixel distance) of the k nearest, nearest first.
    pub nearest: Vec<Vec<(String, f64)>>,
    #[serde(skip)]
    pub images: Vec<Tensor>,
}

pub fn neighbours(model: &DiffusionModel, samples: &Tensor, k: usize) -> Result<Neighbours, ModelError> {
    let cfg = model.config();
    let set = Arc::new(source::load(&cfg.data)?);
    let split = Split::new(&set.ids, cfg.data.val_fraction, cfg.seed);
    let loader = Loader::new(set.clone(), split.train.clone(), cfg.data.image_size, cfg.data.crop, Default::default(), cfg.seed);
    let b = loader.fixed_batch(&split.train);
    let train = Tensor::from_slice(&b.images).view([b.size as i64, -1]);
    let s = samples.to_kind(Kind::Float).view([samples.size()[0], -1]);
    let d = s.unsqueeze(1) - train.unsqueeze(0); // (n, m, p)
    let dist = d.square().mean_dim([2i64].as_slice(), false, Kind::Float).sqrt();
    let (vals, idx) = dist.topk(k as i64, 1, false, true);
    let mut nearest = Vec::new();
    let mut images = Vec::new();
    let shape = [1, b.channels as i64, b.height as i64, b.width as i64];
    for i in 0..samples.size()[0] {
        let mut row = Vec::new();
        for j in 0..k as i64 {
            let t = idx.int64_value(&[i, j]);
            row.push((set.ids[split.train[t as usize]].clone(), vals.double_value(&[i, j])));
            images.push(train.get(t).view(shape));
        }
        nearest.push(row);
    }
    Ok(Neighbours { nearest, images })
}
