//! The Stable Diffusion family as diffusers saves it: the folder's components, its scheduler
//! config, and text-to-image generation.

pub mod components;
pub mod flow_scheduler;
pub mod lora_export;
pub mod lora_file;
pub mod lora_merge;
pub mod pipeline;
pub mod published;
pub mod run_defaults;
pub mod scheduler;
pub mod scratch;
pub mod single_file;
pub mod single_file_base;
mod single_file_clip;
mod single_file_rules;
mod single_file_unet;
mod single_file_vae;

pub use lora_export::{LoraExport, NetworkAdapters};
pub use lora_file::{LoraFormat, LoraReport};
pub use pipeline::{is_diffusers_folder, Generation, PromptIds, StableDiffusion, TextToImage};
pub use run_defaults::run_defaults;
pub use scheduler::{SchedulerConfig, Scheduling};
pub use single_file::Family;
