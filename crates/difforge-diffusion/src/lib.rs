//! Diffusion for difforge: noise schedules, the forward process (noising, targets, loss
//! weights) and the loss, what the network predicts (epsilon, v or x0), samplers behind one small
//! trait (one per file, listed in one registry), classifier-free guidance and the sampling loop.

pub mod config;
pub mod flow;
pub mod forward;
pub mod guidance;
pub mod loss;
pub mod noise;
pub mod prediction;
pub mod sample;
pub mod sampler;
pub mod schedule;

pub use config::{DiffusionConfig, SamplerConfig, Spacing, TimestepSampling};
pub use forward::{ForwardProcess, Noised};
pub use loss::{Loss, LossKind};
pub use noise::{NoiseSource, StartNoise};
pub use prediction::Prediction;
pub use sample::{sample, sample_until, Denoiser, SampleRequest, TrajectoryStep};
pub use sampler::{Sampler, SamplerKind};
pub use schedule::{NoiseSchedule, ScheduleKind};
