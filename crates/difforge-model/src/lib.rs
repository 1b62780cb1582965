//! A difforge diffusion model: the model in memory whatever its family ([`DiffusionModel`]),
//! the family seam ([`family::Family`]: network, codec, conditioning), the checkpoint format,
//! generation, the validation loss, LoRA adapter files, and device preparation. Serving,
//! evaluation and explanations build on this crate, not on the trainer.

pub mod adapter;
pub mod checkpoint;
pub mod codec;
pub mod device;
pub mod error;
pub mod family;
pub mod generate;
pub mod graphed_denoiser;
pub mod images;
pub mod model;
pub mod stable_diffusion;
pub mod validation;

pub use difforge_config::RunConfig;
pub use error::ModelError;
pub use family::{Condition, ConditionKind, Family};
pub use generate::{generate, GenerateSpec};
pub use model::{DiffusionModel, Weights};
