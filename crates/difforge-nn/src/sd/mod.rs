//! The Stable Diffusion model family's networks, with tensor names exactly as diffusers and
//! transformers name them, so that their files load as they are: the CLIP text encoder, the
//! VAE (`AutoencoderKL`) and `UNet2DConditionModel`, and the folder and weight loading they share.

pub mod load;
