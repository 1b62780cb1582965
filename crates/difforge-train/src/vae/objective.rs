//! What a VAE is trained on and judged by: the training loss (reconstruction of a posterior
//! sample plus a weighted KL divergence to N(0, I)) and the validation metrics of the
//! reconstructions of the posterior mean (the loss's reconstruction term, PSNR, SSIM).

use difforge_config::{ReconstructionLoss, VaeConfig};
use difforge_nn::sd::autoencoder_kl::AutoencoderKl;
use difforge_nn::NnError;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// The loss of one batch and its two terms (per pixel, see [`training_loss`]).
pub struct LossTerms {
    pub total: Tensor,
    pub reconstruction: f64,
    pub kl: f64,
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
/// it from the step, so a resumed run draws the same).
pub fn training_loss(vae: &AutoencoderKl, cfg: &VaeConfig, images: &Tensor, noise: &Tensor) -> Result<LossTerms, NnError> {
    let posterior = vae.encode(images)?;
    let z = posterior.sample(noise)?;
    let out = vae.decode(&z)?;
    let recon = reconstruction(cfg.reconstruction_loss, &out, images);
    let kl_per_image =
        (posterior.mean.square() + posterior.logvar.exp() - 1.0 - &posterior.logvar).sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Float) * 0.5;
    let pixels_per_image = (images.numel() / images.size()[0].max(1) as usize) as f64;
    let kl = kl_per_image.mean(Kind::Float) / pixels_per_image;
    let total = &recon + &kl * cfg.kl_weight;
    Ok(LossTerms { reconstruction: recon.double_value(&[]), kl: kl.double_value(&[]), total })
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
