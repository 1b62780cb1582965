//! The class-conditional (or unconditional) UNet on pixels. A class-conditional model learns
//! one extra class-embedding row, the null class, used for unconditional predictions.

use super::{Condition, ConditionKind, Family};
use crate::codec::{Codec, Identity};
use crate::error::ModelError;
use difforge_core::{ConfigError, StreamRng};
use difforge_data::{Batch, ImageSet};
use difforge_nn::lora::CLASS_EMBEDDING;
use difforge_nn::{Conditioning, DenoiserNet, LoraConfig, LoraSpec, UNet, UNetConfig};
use rand::Rng;
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

pub struct PixelUnetFamily {
    config: UNetConfig,
}

impl PixelUnetFamily {
    pub fn new(config: UNetConfig) -> PixelUnetFamily {
        PixelUnetFamily { config }
    }

    fn conditional(&self) -> bool {
        self.config.num_classes > 0
    }

    /// The class index of a condition (the null class for none; prompts are refused by
    /// `ConditionKind::check` before this).
    fn class_index(&self, c: &Condition) -> i64 {
        match c {
            Condition::Class(k) => *k,
            Condition::Unconditional | Condition::Text(_) => self.config.null_class(),
        }
    }
}

impl Family for PixelUnetFamily {
    fn name(&self) -> &'static str {
        "pixel-unet"
    }

    fn pixel_shape(&self) -> [i64; 3] {
        [self.config.in_channels, self.config.image_size, self.config.image_size]
    }

    fn condition_kind(&self) -> ConditionKind {
        if self.conditional() {
            ConditionKind::Classes(self.config.num_classes)
        } else {
            ConditionKind::Nothing
        }
    }

    fn build_network(&self, p: &nn::Path, lora: Option<&LoraSpec>) -> Result<Box<dyn DenoiserNet>, ModelError> {
        Ok(Box::new(UNet::with_lora(p, &self.config, lora)?))
    }

    fn codec(&self) -> Box<dyn Codec> {
        Box::new(Identity)
    }

    fn encode(&self, conditions: &[Condition], device: Device) -> Result<(Conditioning, Option<Conditioning>), ModelError> {
        if !self.conditional() {
            return Ok((Conditioning::None, None));
        }
        let kind = self.condition_kind();
        for c in conditions {
            kind.check("class", c)?;
        }
        let classes: Vec<i64> = conditions.iter().map(|c| self.class_index(c)).collect();
        let classes = Tensor::from_slice(&classes).to_device(device);
        let null = classes.full_like(self.config.null_class());
        Ok((Conditioning::Class(classes), Some(Conditioning::Class(null))))
    }

    fn training_conditioning(&self, batch: &Batch, dropout: f64, rng: &mut StreamRng, device: Device) -> Conditioning {
        if !self.conditional() {
            return Conditioning::None;
        }
        let null = self.config.null_class();
        let classes: Vec<i64> = batch.labels.iter().map(|&l| if l < 0 || rng.random_bool(dropout) { null } else { l }).collect();
        Conditioning::Class(Tensor::from_slice(&classes).to_device(device))
    }

    fn fixed_conditioning(&self, labels: &[i64], _captions: &[Option<String>]) -> Conditioning {
        if !self.conditional() {
            return Conditioning::None;
        }
        let null = self.config.null_class();
        let classes: Vec<i64> = labels.iter().map(|&l| if l < 0 { null } else { l }).collect();
        Conditioning::Class(Tensor::from_slice(&classes))
    }

    fn check_data(&self, set: &ImageSet) -> Result<Vec<String>, ConfigError> {
        let classes = set.num_classes() as i64;
        let k = self.config.num_classes;
        if k > 0 && classes > k {
            return Err(ConfigError::new("model.num_classes", k, format!("at least the {classes} classes of the data")));
        }
        if k == 0 && classes > 1 {
            return Ok(vec![format!("the data has {classes} classes but model.num_classes = 0: training an unconditional model")]);
        }
        Ok(Vec::new())
    }

    /// A class embedding that grew keeps the old rows, moves the null row to its new place and
    /// starts new classes at the mean of the old ones; every other tensor must match.
    fn start_from_base(&self, name: &str, base: &Tensor, var: &Tensor, path: &Path) -> Result<Tensor, ModelError> {
        if name == CLASS_EMBEDDING && base.size() != var.size() {
            return grow_class_embedding(base, var, path);
        }
        if base.size() != var.size() {
            return Err(ModelError::checkpoint(path, format!("tensor `{name}` has shape {:?} in the base, the model expects {:?}", base.size(), var.size())));
        }
        Ok(base.shallow_clone())
    }

    fn adapter_carries(&self, lora: &LoraConfig, name: &str) -> bool {
        difforge_nn::lora::is_lora_variable(name) || (lora.train_class_embedding && name == CLASS_EMBEDDING)
    }
}

fn grow_class_embedding(src: &Tensor, var: &Tensor, path: &Path) -> Result<Tensor, ModelError> {
    let (old_rows, new_rows) = (src.size()[0], var.size()[0]);
    if new_rows < old_rows || src.size()[1] != var.size()[1] {
        return Err(ModelError::checkpoint(
            path,
            format!("the base has {} classes, the fine-tune {}: classes can be added, not removed", old_rows - 1, new_rows - 1),
        ));
    }
    let (k_old, k_new) = (old_rows - 1, new_rows - 1);
    let old_classes = src.narrow(0, 0, k_old);
    let mean = old_classes.mean_dim([0i64].as_slice(), true, Kind::Float);
    let added = mean.expand([k_new - k_old, src.size()[1]], false);
    Ok(Tensor::cat(&[old_classes, added, src.narrow(0, k_old, 1)], 0))
}
