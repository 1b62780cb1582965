//! Between pixels and the space the network works in: the identity for pixel-space models; a
//! VAE for latent models. Training encodes images before noising them; generation decodes what
//! the sampler produced.

use tch::Tensor;

pub trait Codec: Send + Sync {
    /// A name for reports ("identity", "vae").
    fn name(&self) -> &'static str;

    /// Images (N, C, H, W) in [-1, 1] to the network's space.
    fn encode(&self, pixels: &Tensor) -> Tensor;

    /// The network's space back to images in [-1, 1] (not clamped).
    fn decode(&self, latents: &Tensor) -> Tensor;

    /// The network-space shape (C, H, W) of one image of pixel shape `pixels`.
    fn latent_shape(&self, pixels: [i64; 3]) -> [i64; 3];

    /// Whether the network's space is a latent one (not bounded to [-1, 1] as pixels are).
    fn is_latent(&self) -> bool;
}

/// Pixel-space models: the network sees the pixels themselves.
pub struct Identity;

impl Codec for Identity {
    fn name(&self) -> &'static str {
        "identity"
    }

    fn encode(&self, pixels: &Tensor) -> Tensor {
        pixels.shallow_clone()
    }

    fn decode(&self, latents: &Tensor) -> Tensor {
        latents.shallow_clone()
    }

    fn latent_shape(&self, pixels: [i64; 3]) -> [i64; 3] {
        pixels
    }

    fn is_latent(&self) -> bool {
        false
    }
}
