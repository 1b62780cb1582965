//! The Stable Diffusion family as diffusers saves it: the folder's components, its scheduler
//! config, and text-to-image generation.

pub mod pipeline;
pub mod scheduler;

pub use pipeline::{is_diffusers_folder, Generation, PromptIds, StableDiffusion, TextToImage};
pub use scheduler::{SchedulerConfig, Scheduling};
