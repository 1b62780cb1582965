//! The Stable Diffusion model family's networks, with tensor names exactly as diffusers and
//! transformers name them, so that their files load as they are: the CLIP text encoder, the
//! VAE (`AutoencoderKL`) and `UNet2DConditionModel`, and the folder and weight loading they share.

pub mod attention;
pub mod autoencoder_kl;
pub mod bpe_learn;
mod clip_encoder;
pub mod clip_model;
pub mod clip_text;
pub mod clip_vision;
pub mod config_bounds;
pub mod lazy_tensor;
pub mod load;
pub mod presets;
pub mod resample;
pub mod resnet;
pub mod t5_encoder;
pub mod t5_tokenizer;
pub mod tokenizer;

pub use clip_text::{ClipActivation, ClipTextConfig, ClipTextModel, ClipTextOutput};
pub mod embeddings;
pub mod transformer_2d;
pub mod unet_2d_condition;
pub mod unet_blocks;
pub mod unet_config;
pub mod vae_blocks;
