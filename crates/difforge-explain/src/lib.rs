//! Explanations of a diffusion model, pictures first and numbers beside them: the denoising
//! trajectory, the loss per noise level, how much the conditioning drives each pixel, where
//! attention looks, and the nearest training images of each sample.

pub mod attention;
pub mod attribution;
pub mod error;
pub mod heatmap;
pub mod neighbours;
pub mod report;
pub mod timesteps;
pub mod trajectory;

use difforge_diffusion::{NoiseSource, SampleRequest, SamplerConfig};
pub use error::ExplainError;

use difforge_model::{Condition, DiffusionModel, ModelError};

/// What to explain: one image per seed, all conditioned on `condition`.
pub struct Subject<'a> {
    pub model: &'a DiffusionModel,
    pub sampler: &'a SamplerConfig,
    pub condition: Condition,
    pub seeds: Vec<u64>,
}

impl Subject<'_> {
    /// The shape (C, H, W) the sampler works in.
    pub fn shape(&self) -> [i64; 3] {
        self.model.latent_shape()
    }

    /// The starting noise `generate` gives the same seeds (the sampler's `noise` source), so an
    /// explained image is the one `difforge sample` makes.
    pub fn noise(&self) -> NoiseSource {
        NoiseSource::new(self.seeds.clone(), self.shape(), self.model.device()).with_start(self.sampler.noise)
    }

    /// The sampling request for this subject (with `condition` instead of the subject's own when
    /// given), drawing from `noise`.
    pub fn request<'b>(&'b self, noise: &'b NoiseSource, sampler: &'b SamplerConfig, condition: Option<&Condition>) -> Result<SampleRequest<'b>, ModelError> {
        let condition = condition.unwrap_or(&self.condition);
        let (cond, null) = self.model.encode(&vec![condition.clone(); self.seeds.len()])?;
        Ok(SampleRequest { schedule: self.model.schedule(), prediction: self.model.config().diffusion.prediction, sampler, cond, null, noise })
    }
}
