//! Networks for difforge: the class-conditional UNet (built from a config, one block type per
//! file) behind the denoiser interface every model family implements, the small CNN classifier
//! used to judge samples, the feature networks of the metrics, LoRA layers, the AdamW optimiser,
//! and weight files (safetensors with stable, readable tensor names such as
//! `down.0.res.1.conv1.weight`; torch.save files read without executing anything).

pub mod activation;
pub mod classifier;
pub mod conditioning;
pub mod denoiser;
pub mod error;
pub mod features;
pub mod flat;
pub mod lora;
pub mod optim;
pub mod sd;
pub mod torch_pickle;
pub mod unet;
pub mod weights;

pub use activation::Activation;
pub use classifier::{Classifier, ClassifierConfig};
pub use conditioning::{Conditioning, TextConditioning};
pub use denoiser::{AttentionMaps, DenoiserNet};
pub use error::NnError;
pub use flat::FlatBuffer;
pub use lora::{LoraConfig, LoraSpec, LoraTarget};
pub use optim::{AdamW, AdamWConfig};
pub use unet::{UNet, UNetConfig};
