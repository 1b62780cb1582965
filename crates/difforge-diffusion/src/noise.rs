//! Per-image Gaussian noise drawn in Rust from portable generators: image k of a batch draws
//! from its own seed, so a result does not depend on the batch it was generated in (dynamic
//! batching in the server), on libtorch's global generator, or on the device. On request the
//! starting noise instead comes from libtorch's CPU generator seeded as diffusers seeds
//! `torch.Generator("cpu").manual_seed(seed)`, so a seed gives the image it gives there.

use difforge_core::{rng_for, Stream};
use rand_distr::{Distribution, StandardNormal};
use tch::{Device, Tensor};

/// `count` standard normal floats from (seed, stream, index).
pub fn gaussian(seed: u64, stream: Stream, index: u64, count: usize) -> Vec<f32> {
    let mut rng = rng_for(seed, stream, index);
    (0..count).map(|_| StandardNormal.sample(&mut rng)).collect()
}

difforge_core::choice! {
    /// Where the starting noise comes from.
    #[derive(Default)]
    pub enum StartNoise {
        /// difforge's portable per-image generator.
        #[default]
        Portable = "portable",
        /// libtorch's CPU generator, per image `manual_seed(seed)` then `randn` (diffusers with one
        /// `torch.Generator("cpu")` per image). The steps' fresh noise stays portable.
        Torch = "torch",
    }
}

impl StartNoise {
    /// The default, left out of saved configs so that they read as before the choice existed.
    pub fn is_portable(&self) -> bool {
        *self == StartNoise::Portable
    }
}

#[derive(Debug, Clone)]
pub struct NoiseSource {
    seeds: Vec<u64>,
    shape: [i64; 3],
    device: Device,
    start: StartNoise,
}

/// One image's noise from its own seeded CPU generator (the native layer: tch has no
/// generator objects, and libtorch's global generator is shared with every other thread).
fn torch_randn(seed: u64, shape: [i64; 3]) -> Tensor {
    difforge_native::randn_seeded(&shape, seed).unwrap_or_else(|e| panic!("drawing noise on the CPU cannot fail: {e}"))
}

impl NoiseSource {
    /// One seed per image; `shape` is one image's (C, H, W).
    pub fn new(seeds: Vec<u64>, shape: [i64; 3], device: Device) -> NoiseSource {
        NoiseSource { seeds, shape, device, start: StartNoise::Portable }
    }

    /// The same seeds with the starting noise drawn as `start` says.
    pub fn with_start(self, start: StartNoise) -> NoiseSource {
        NoiseSource { start, ..self }
    }

    pub fn batch_size(&self) -> usize {
        self.seeds.len()
    }

    /// The noise of draw number `draw` (0 = the starting image, i + 1 = sampler step i).
    pub fn draw(&self, draw: u64) -> Tensor {
        if draw == 0 && self.start == StartNoise::Torch {
            let images: Vec<Tensor> = self.seeds.iter().map(|&s| torch_randn(s, self.shape)).collect();
            return Tensor::stack(&images, 0).to_device(self.device);
        }
        let per = (self.shape[0] * self.shape[1] * self.shape[2]) as usize;
        let data: Vec<f32> = self.seeds.iter().flat_map(|&s| gaussian(s, Stream::Sample, draw, per)).collect();
        let shape = [self.seeds.len() as i64, self.shape[0], self.shape[1], self.shape[2]];
        Tensor::from_slice(&data).view(shape).to_device(self.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_keeps_its_noise_in_any_batch() {
        let alone = NoiseSource::new(vec![5], [1, 2, 2], Device::Cpu).draw(3);
        let batch = NoiseSource::new(vec![9, 5], [1, 2, 2], Device::Cpu).draw(3);
        assert!(alone.get(0).equal(&batch.get(1)));
        assert!(!alone.get(0).equal(&batch.get(0)));
    }
}
