//! A frozen AutoencoderKL as the codec of a latent model: images to the mean of the encoder's
//! Gaussian at the UNet's scale, and back through the decoder. The mean rather than a sample:
//! the same image always gives the same latents, so latents can be cached and a resumed run
//! sees what the uninterrupted one saw.

use super::latent_cache::LatentCache;
use crate::codec::Codec;
use difforge_nn::sd::autoencoder_kl::AutoencoderKl;
use std::sync::{Arc, Mutex};
use tch::Tensor;

pub struct VaeCodec {
    vae: Arc<Mutex<AutoencoderKl>>,
    downscale: i64,
    latent_channels: i64,
    cache: Option<Arc<LatentCache>>,
}

impl VaeCodec {
    /// With `cache`, latents are read from and written to it.
    pub fn new(vae: Arc<Mutex<AutoencoderKl>>, cache: Option<Arc<LatentCache>>) -> VaeCodec {
        let (downscale, latent_channels) = {
            let v = vae.lock().unwrap_or_else(|p| p.into_inner());
            (v.downscale(), v.config().latent_channels)
        };
        VaeCodec { vae, downscale, latent_channels, cache }
    }

    /// The latents of images on the VAE's device, back on the pixels' device, `ENCODE_CHUNK`
    /// images at a time.
    fn encode_uncached(&self, pixels: &Tensor) -> Tensor {
        let n = pixels.size()[0];
        if n <= ENCODE_CHUNK {
            return self.encode_chunk(pixels);
        }
        let chunks: Vec<Tensor> =
            (0..n).step_by(ENCODE_CHUNK as usize).map(|start| self.encode_chunk(&pixels.narrow(0, start, ENCODE_CHUNK.min(n - start)))).collect();
        Tensor::cat(&chunks, 0)
    }

    fn encode_chunk(&self, pixels: &Tensor) -> Tensor {
        self.with(|vae| {
            let device = vae.device();
            let posterior = vae.encode(&pixels.to_device(device)).expect("the family checks the image size against the VAE");
            vae.to_latents(&posterior.mode()).to_device(pixels.device())
        })
    }

    fn with<T>(&self, f: impl FnOnce(&AutoencoderKl) -> T) -> T {
        let vae = self.vae.lock().unwrap_or_else(|p| p.into_inner());
        tch::no_grad(|| f(&vae))
    }
}

/// Images the VAE encodes at once. A run's validation set (up to `train.val_images`, 500) in one
/// batch needs the encoder's activations for all of them: at SD's 512 px that is tens of GB, out
/// of memory on a GPU (diffusers' `enable_slicing` goes one image at a time). Training batches up
/// to this size encode as before.
const ENCODE_CHUNK: i64 = 8;

impl Codec for VaeCodec {
    fn name(&self) -> &'static str {
        "vae"
    }

    fn is_latent(&self) -> bool {
        true
    }

    /// On the VAE's device (or from the cache); the latents come back on the pixels' device.
    fn encode(&self, pixels: &Tensor) -> Tensor {
        match &self.cache {
            Some(cache) => {
                let size = pixels.size();
                let shape = self.latent_shape([size[1], size[2], size[3]]);
                cache.latents(pixels, shape, |image| self.encode_uncached(image))
            }
            None => self.encode_uncached(pixels),
        }
    }

    fn decode(&self, latents: &Tensor) -> Tensor {
        self.with(|vae| {
            let images = vae.decode_sliced(&vae.from_latents(&latents.to_device(vae.device())));
            images.expect("latents of the codec's own shape").to_device(latents.device())
        })
    }

    fn latent_shape(&self, pixels: [i64; 3]) -> [i64; 3] {
        [self.latent_channels, pixels[1] / self.downscale, pixels[2] / self.downscale]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use tch::{Device, Kind};

    #[test]
    fn a_batch_larger_than_a_chunk_encodes_as_its_images_do_one_by_one() {
        let vae_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../difforge-nn/tests/fixtures/sd/tiny-sd15/vae");
        let codec = VaeCodec::new(Arc::new(Mutex::new(AutoencoderKl::load(&vae_dir, Device::Cpu).unwrap())), None);
        tch::manual_seed(3);
        let pixels = Tensor::rand([2 * ENCODE_CHUNK + 3, 3, 16, 16], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let batched = codec.encode(&pixels);
        assert_eq!(batched.size()[0], 2 * ENCODE_CHUNK + 3);
        for i in [0, ENCODE_CHUNK, 2 * ENCODE_CHUNK + 2] {
            let alone = codec.encode(&pixels.narrow(0, i, 1));
            let error = (batched.narrow(0, i, 1) - &alone).abs().max().double_value(&[]);
            assert!(error < 1e-5, "image {i}: {error}");
        }
    }
}
