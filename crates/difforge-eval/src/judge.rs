//! The sample judge: a CNN classifier trained on a dataset's training split (never its
//! validation split, which the diffusion run holds out with the same seed), and the check
//! "what fraction of generated samples is classified as the class they were asked for".

use crate::error::EvalError;
use difforge_core::{ConfigError, Progress};
use difforge_data::{source, AugmentConfig, DataConfig, Loader, Split};
use difforge_model::model::sorted_variables;
use difforge_nn::{AdamW, AdamWConfig, Classifier, ClassifierConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{nn::VarStore, Device, Kind, Tensor};

pub const WEIGHTS_FILE: &str = "classifier.safetensors";
pub const META_FILE: &str = "classifier.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassifierMeta {
    pub network: ClassifierConfig,
    pub data: DataConfig,
    pub seed: u64,
    pub class_names: Vec<String>,
    pub steps: u64,
    pub train_images: usize,
    pub val_images: usize,
    pub val_accuracy: f64,
}

#[derive(Debug, Clone)]
pub struct ClassifierTraining {
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub width: i64,
}

impl Default for ClassifierTraining {
    fn default() -> Self {
        ClassifierTraining { steps: 600, batch_size: 128, lr: 2e-3, width: 32 }
    }
}

fn batch_tensors(b: &difforge_data::Batch, device: Device) -> (Tensor, Tensor) {
    let x = Tensor::from_slice(&b.images).view(b.shape()).to_device(device);
    (x, Tensor::from_slice(&b.labels).to_device(device))
}

/// Class predictions for images in [-1, 1], in batches.
pub fn predict(net: &Classifier, images: &Tensor, device: Device) -> Result<Vec<i64>, tch::TchError> {
    tch::no_grad(|| {
        let n = images.size()[0];
        let mut out = Vec::with_capacity(n as usize);
        let mut start = 0;
        while start < n {
            let len = (n - start).min(512);
            let logits = net.forward(&images.narrow(0, start, len).to_device(device), false);
            out.extend(Vec::<i64>::try_from(&logits.argmax(1, false).to_device(Device::Cpu))?);
            start += len;
        }
        Ok(out)
    })
}

/// Trains the judge on `data`'s training split and writes it to `out_dir`.
pub fn train_classifier(data: &DataConfig, seed: u64, opts: &ClassifierTraining, device: Device, out_dir: &Path) -> Result<ClassifierMeta, EvalError> {
    let set = Arc::new(source::load(data)?);
    if set.num_classes() < 2 || set.labels.iter().any(Option::is_none) {
        return Err(ConfigError::problem("data", "the classifier needs a labelled dataset with at least 2 classes").into());
    }
    let split = Split::new(&set.ids, data.val_fraction, seed);
    // Mild augmentation makes the judge robust to the small shifts generated samples have.
    let aug = AugmentConfig { scale_crop: 0.5, scale_min: 0.85, rotate: 0.5, rotate_degrees: 10.0, ..Default::default() };
    let mut loader = Loader::new(set.clone(), split.train.clone(), data.image_size, data.crop, aug, seed ^ 0xC1A5);
    let val = Loader::new(set.clone(), split.val.clone(), data.image_size, data.crop, AugmentConfig::default(), seed);

    tch::manual_seed((seed ^ 0xC1A5) as i64 >> 1);
    let vs = VarStore::new(device);
    let network = ClassifierConfig {
        in_channels: i64::from(data.channels),
        image_size: i64::from(data.image_size),
        num_classes: set.num_classes() as i64,
        width: opts.width,
        dropout: 0.3,
    };
    let net = Classifier::new(&vs.root(), &network);
    let mut opt = AdamW::new(sorted_variables(&vs), AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-4 })?;
    let mut progress = Progress::new("classifier", opts.steps, 0);
    for step in 0..opts.steps {
        let (x, y) = batch_tensors(&loader.train_batch(step, opts.batch_size), device);
        opt.zero_grad();
        let loss = net.forward(&x, true).cross_entropy_for_logits(&y);
        loss.backward();
        // Cosine decay over the run.
        let lr = opts.lr * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / opts.steps as f64).cos());
        opt.step(lr)?;
        if step % 20 == 0 || step + 1 == opts.steps {
            progress.update(step + 1, &format!("loss {:.4}", loss.double_value(&[])));
        }
    }
    progress.finish();

    let val_batch = val.fixed_batch(&split.val);
    let (vx, vy) = batch_tensors(&val_batch, Device::Cpu);
    let pred = predict(&net, &vx, device)?;
    let truth = Vec::<i64>::try_from(&vy)?;
    let correct = pred.iter().zip(&truth).filter(|(p, t)| p == t).count();
    let val_accuracy = if truth.is_empty() { 0.0 } else { correct as f64 / truth.len() as f64 };

    let meta = ClassifierMeta {
        network,
        data: data.clone(),
        seed,
        class_names: set.class_names.clone(),
        steps: opts.steps,
        train_images: split.train.len(),
        val_images: split.val.len(),
        val_accuracy,
    };
    std::fs::create_dir_all(out_dir).map_err(|e| EvalError::write(out_dir, e))?;
    difforge_nn::weights::save(&vs, &out_dir.join(WEIGHTS_FILE))?;
    let json = serde_json::to_vec_pretty(&meta).map_err(|e| EvalError::write(out_dir.join(META_FILE), e))?;
    difforge_core::write_atomic(&out_dir.join(META_FILE), &json).map_err(|e| EvalError::write(out_dir.join(META_FILE), e))?;
    Ok(meta)
}

/// A trained judge, loaded.
pub struct Judge {
    pub net: Classifier,
    pub meta: ClassifierMeta,
    pub device: Device,
    _vs: VarStore,
}

pub fn load_judge(dir: &Path, device: Device) -> Result<Judge, EvalError> {
    let meta_path = dir.join(META_FILE);
    let text = std::fs::read(&meta_path).map_err(|e| EvalError::read(&meta_path, e))?;
    let meta: ClassifierMeta = serde_json::from_slice(&text).map_err(|e| EvalError::read(&meta_path, e))?;
    let mut vs = VarStore::new(device);
    let net = Classifier::new(&vs.root(), &meta.network);
    difforge_nn::weights::load(&mut vs, &dir.join(WEIGHTS_FILE))?;
    Ok(Judge { net, meta, device, _vs: vs })
}

/// How well samples match the classes they were asked for.
#[derive(Debug, Clone, Serialize)]
pub struct JudgeReport {
    pub samples: usize,
    pub accuracy: f64,
    /// Mean pixel value of the samples on [-1, 1] (a simple style statistic).
    pub mean_pixel: f64,
    pub per_class_accuracy: Vec<f64>,
    /// confusion[asked][judged]
    pub confusion: Vec<Vec<usize>>,
    pub grid: Option<PathBuf>,
}

pub fn judge(j: &Judge, images: &Tensor, asked: &[i64]) -> Result<JudgeReport, EvalError> {
    let k = j.meta.class_names.len();
    let pred = predict(&j.net, &images.to_kind(Kind::Float), j.device)?;
    let mut confusion = vec![vec![0usize; k]; k];
    for (&a, &p) in asked.iter().zip(&pred) {
        if (a as usize) < k && (p as usize) < k {
            confusion[a as usize][p as usize] += 1;
        }
    }
    let per_class_accuracy = confusion
        .iter()
        .enumerate()
        .map(|(c, row)| {
            let total: usize = row.iter().sum();
            if total == 0 {
                0.0
            } else {
                row[c] as f64 / total as f64
            }
        })
        .collect();
    let correct = asked.iter().zip(&pred).filter(|(a, p)| a == p).count();
    Ok(JudgeReport {
        samples: asked.len(),
        mean_pixel: images.to_kind(Kind::Double).mean(Kind::Double).double_value(&[]),
        accuracy: if asked.is_empty() { 0.0 } else { correct as f64 / asked.len() as f64 },
        per_class_accuracy,
        confusion,
        grid: None,
    })
}
