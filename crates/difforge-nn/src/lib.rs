//! Networks for difforge: the class-conditional UNet (built from a config, one block type per
//! file), the small CNN classifier used to judge samples, and safetensors weight files with
//! stable, readable tensor names (`down.0.res.1.conv1.weight`, `mid.attn.to_q.weight`, ...).

pub mod activation;
pub mod classifier;
pub mod error;
pub mod features;
pub mod lora;
pub mod torch_pickle;
pub mod unet;
pub mod weights;

pub use activation::Activation;
pub use classifier::{Classifier, ClassifierConfig};
pub use error::NnError;
pub use lora::{LoraConfig, LoraSpec, LoraTarget};
pub use unet::{UNet, UNetConfig};
