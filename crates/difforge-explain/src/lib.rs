//! Explanations of a diffusion model, pictures first and numbers beside them: the denoising
//! trajectory, the loss per noise level, how much the class drives each pixel, where attention
//! looks, and the nearest training images of each sample.

pub mod attention;
pub mod attribution;
pub mod heatmap;
pub mod neighbours;
pub mod report;
pub mod svg;
pub mod timesteps;
pub mod trajectory;

use difforge_diffusion::{NoiseSource, SampleRequest, SamplerConfig};
use difforge_train::DiffusionModel;
use tch::Tensor;

/// What to explain: one image per seed, of the given class (None: the null class).
pub struct Subject<'a> {
    pub model: &'a DiffusionModel,
    pub sampler: &'a SamplerConfig,
    pub class: Option<i64>,
    pub seeds: Vec<u64>,
}

impl Subject<'_> {
    pub fn shape(&self) -> [i64; 3] {
        let m = &self.model.config.model;
        [m.in_channels, m.image_size, m.image_size]
    }

    pub fn noise(&self) -> NoiseSource {
        NoiseSource::new(self.seeds.clone(), self.shape(), self.model.device)
    }

    /// Class indices per image (the null class when none is asked), on the model's device.
    pub fn classes(&self) -> Option<Tensor> {
        let m = &self.model.config.model;
        (m.num_classes > 0).then(|| {
            let c = self.class.unwrap_or(m.null_class());
            Tensor::from_slice(&vec![c; self.seeds.len()]).to_device(self.model.device)
        })
    }

    pub fn request<'b>(&'b self, noise: &'b NoiseSource, sampler: &'b SamplerConfig) -> SampleRequest<'b> {
        SampleRequest {
            schedule: &self.model.schedule,
            prediction: self.model.config.diffusion.prediction,
            sampler,
            classes: self.classes(),
            null_class: self.model.config.model.null_class(),
            noise,
        }
    }
}
