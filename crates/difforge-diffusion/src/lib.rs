//! Diffusion for difforge: noise schedules, what the network predicts (epsilon, v or x0) and
//! its loss weighting, samplers behind one small trait (one per file), classifier-free guidance
//! and the sampling loop.

pub mod config;
pub mod guidance;
pub mod noise;
pub mod prediction;
pub mod sample;
pub mod sampler;
pub mod schedule;

pub use config::{DiffusionConfig, SamplerConfig, SamplerKind, Spacing};
pub use noise::NoiseSource;
pub use prediction::Prediction;
pub use sample::{sample, Denoiser, SampleRequest, TrajectoryStep};
pub use sampler::Sampler;
pub use schedule::{NoiseSchedule, ScheduleKind};
