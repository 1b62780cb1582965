//! The optional adversarial part of the VAE loss (`vae.discriminator_weight` > 0): a small patch
//! discriminator in the manner of taming-transformers' `NLayerDiscriminator` (as Stable
//! Diffusion's VAE was trained with), smaller for small images, and the hinge losses.
//!
//! Layers: a 4x4 stride-2 convolution (32 channels) and LeakyReLU(0.2); a 4x4 stride-2
//! convolution (64) with group norm and LeakyReLU; a 4x4 stride-1 convolution (128) with group
//! norm and LeakyReLU; a 4x4 stride-1 convolution to one logit per patch (a 32 x 32 image gives
//! 6 x 6 patches, a 16 x 16 one 2 x 2). Group norm rather than taming's batch norm: no running
//! statistics to checkpoint, and a batch's images do not influence each other's logits.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// Channels of the first layer; each strided layer doubles them.
const BASE_CHANNELS: i64 = 32;
const GROUPS: i64 = 8;
const SLOPE: f64 = 0.2;

/// The patch discriminator: one logit per overlapping patch of the image.
pub struct PatchDiscriminator {
    convs: Vec<nn::Conv2D>,
    norms: Vec<Option<nn::GroupNorm>>,
}

impl PatchDiscriminator {
    /// Creates the variables below `root` (names `conv0.weight`, `norm1.weight`, ...).
    pub fn new(root: &nn::Path, in_channels: i64) -> PatchDiscriminator {
        let c = BASE_CHANNELS;
        // (in, out, stride, normalised)
        let layers = [(in_channels, c, 2, false), (c, 2 * c, 2, true), (2 * c, 4 * c, 1, true), (4 * c, 1, 1, false)];
        let mut convs = Vec::new();
        let mut norms = Vec::new();
        for (i, &(cin, cout, stride, norm)) in layers.iter().enumerate() {
            let cfg = nn::ConvConfig { stride, padding: 1, bias: !norm, ..Default::default() };
            convs.push(nn::conv2d(root / format!("conv{i}"), cin, cout, 4, cfg));
            norms.push(norm.then(|| nn::group_norm(root / format!("norm{i}"), GROUPS, cout, Default::default())));
        }
        PatchDiscriminator { convs, norms }
    }

    /// Patch logits `[B, 1, h, w]` of images `[B, C, H, W]` in [-1, 1].
    pub fn forward(&self, images: &Tensor) -> Tensor {
        let last = self.convs.len() - 1;
        let mut x = images.shallow_clone();
        for (i, (conv, norm)) in self.convs.iter().zip(&self.norms).enumerate() {
            x = conv.forward(&x);
            if let Some(norm) = norm {
                x = norm.forward(&x);
            }
            if i < last {
                x = leaky_relu(&x);
            }
        }
        x
    }
}

/// LeakyReLU with slope 0.2 (tch's `leaky_relu` has PyTorch's default 0.01).
fn leaky_relu(x: &Tensor) -> Tensor {
    x.maximum(&(x * SLOPE))
}

/// The discriminator's hinge loss: `0.5 * (mean(relu(1 - D(real))) + mean(relu(1 + D(fake))))`,
/// zero once real patches score above 1 and fakes below -1.
pub fn discriminator_hinge(real_logits: &Tensor, fake_logits: &Tensor) -> Tensor {
    ((real_logits.neg() + 1.0).relu().mean(Kind::Float) + (fake_logits + 1.0).relu().mean(Kind::Float)) * 0.5
}

/// The generator's (decoder's) hinge term: `-mean(D(fake))`, lower when the discriminator
/// takes the reconstructions for real.
pub fn generator_hinge(fake_logits: &Tensor) -> Tensor {
    -fake_logits.mean(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::VarStore;
    use tch::Device;

    #[test]
    fn patch_logits_have_the_documented_sizes() {
        tch::manual_seed(3);
        let vs = VarStore::new(Device::Cpu);
        let d = PatchDiscriminator::new(&vs.root(), 3);
        for (side, patches) in [(16, 2), (32, 6)] {
            let out = tch::no_grad(|| d.forward(&Tensor::zeros([2, 3, side, side], (Kind::Float, Device::Cpu))));
            assert_eq!(out.size(), [2, 1, patches, patches], "{side} x {side} images");
        }
    }

    #[test]
    fn hinge_losses_have_the_right_signs_and_margins() {
        let t = |v: f32| Tensor::from_slice(&[v, v]).view([2, 1, 1, 1]);
        // A discriminator that is right by the margin pays nothing; one that is wrong pays.
        assert_eq!(discriminator_hinge(&t(1.5), &t(-1.5)).double_value(&[]), 0.0);
        assert!((discriminator_hinge(&t(-1.0), &t(1.0)).double_value(&[]) - 2.0).abs() < 1e-6);
        assert!((discriminator_hinge(&t(0.0), &t(0.0)).double_value(&[]) - 1.0).abs() < 1e-6);
        // The generator's term falls as the fakes look more real.
        assert!(generator_hinge(&t(2.0)).double_value(&[]) < generator_hinge(&t(-2.0)).double_value(&[]));
        assert!((generator_hinge(&t(0.5)).double_value(&[]) + 0.5).abs() < 1e-6);
        // Gradient descent on the discriminator's loss raises real logits and lowers fake ones.
        let (real, fake) = (t(0.0).set_requires_grad(true), t(0.0).set_requires_grad(true));
        discriminator_hinge(&real, &fake).backward();
        assert!(real.grad().sum(Kind::Float).double_value(&[]) < 0.0);
        assert!(fake.grad().sum(Kind::Float).double_value(&[]) > 0.0);
    }
}
