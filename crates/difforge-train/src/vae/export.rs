//! What a finished VAE run leaves for the next stage and for other tools: the latent
//! statistics and the scaling factor they set (1 / std of the latents, as Stable Diffusion's
//! 0.18215 was chosen), the model as a diffusers `vae/` folder that diffusers' `AutoencoderKL`
//! and difforge's Stable Diffusion loaders read, and a side-by-side grid of reconstructions.

use crate::error::TrainError;
use difforge_config::VaeRunConfig;
use difforge_nn::sd::autoencoder_kl::{AutoencoderKl, AutoencoderKlConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{Kind, Tensor};

/// The diffusers folder's weights file.
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";
/// The diffusers version whose `AutoencoderKL` config this writes (the one the parity tests use).
const DIFFUSERS_VERSION: &str = "0.35.2";

/// The network config of a run: `scaling_factor` is 1 while training (it only scales latents
/// for a UNet) and set from the latents at export.
pub fn network_config(cfg: &VaeRunConfig, scaling_factor: f64) -> AutoencoderKlConfig {
    let levels = cfg.vae.block_out_channels.len();
    AutoencoderKlConfig {
        in_channels: cfg.data.channels as i64,
        out_channels: cfg.data.channels as i64,
        latent_channels: cfg.vae.latent_channels,
        block_out_channels: cfg.vae.block_out_channels.clone(),
        down_block_types: vec!["DownEncoderBlock2D".into(); levels],
        up_block_types: vec!["UpDecoderBlock2D".into(); levels],
        layers_per_block: cfg.vae.layers_per_block,
        norm_num_groups: cfg.vae.norm_num_groups,
        act_fn: "silu".into(),
        scaling_factor,
        shift_factor: None,
        use_quant_conv: true,
        use_post_quant_conv: true,
        mid_block_add_attention: cfg.vae.mid_block_attention,
    }
}

/// Mean and standard deviation of the posterior means over the training images, overall and
/// per latent channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatentStats {
    pub mean: f64,
    pub std: f64,
    /// Per latent channel: the mean of the posterior means.
    #[serde(default)]
    pub channel_mean: Vec<f64>,
    /// Per latent channel: their standard deviation.
    #[serde(default)]
    pub channel_std: Vec<f64>,
    pub images: usize,
}

impl LatentStats {
    /// The factor that gives the latents unit variance, the scale the UNet's noise schedule
    /// assumes; 1 when the latents are constant (an untrained or collapsed VAE).
    pub fn scaling_factor(&self) -> f64 {
        if self.std > 1e-8 && self.std.is_finite() {
            1.0 / self.std
        } else {
            1.0
        }
    }
}

/// Latent statistics from batches of images (each (B, C, H, W) in [-1, 1]).
pub fn latent_stats(vae: &AutoencoderKl, batches: impl Iterator<Item = Tensor>) -> Result<LatentStats, TrainError> {
    let _guard = tch::no_grad_guard();
    let (mut sum, mut sq, mut count, mut images) = (0.0, 0.0, 0.0, 0);
    let (mut ch_sum, mut ch_sq) = (Vec::new(), Vec::new());
    for x in batches {
        let mean = vae.encode(&x)?.mean.to_kind(Kind::Double);
        sum += mean.sum(Kind::Double).double_value(&[]);
        sq += mean.square().sum(Kind::Double).double_value(&[]);
        count += mean.numel() as f64;
        images += x.size()[0] as usize;
        let per_channel = |t: &Tensor| Vec::<f64>::try_from(t.sum_dim_intlist([0i64, 2, 3].as_slice(), false, Kind::Double)).unwrap_or_default();
        let (s, q) = (per_channel(&mean), per_channel(&mean.square()));
        ch_sum.resize(s.len(), 0.0);
        ch_sq.resize(q.len(), 0.0);
        ch_sum.iter_mut().zip(&s).for_each(|(a, b)| *a += b);
        ch_sq.iter_mut().zip(&q).for_each(|(a, b)| *a += b);
    }
    let m = sum / count.max(1.0);
    let var = (sq / count.max(1.0) - m * m).max(0.0);
    let per_channel_count = count / ch_sum.len().max(1) as f64;
    let channel_mean: Vec<f64> = ch_sum.iter().map(|s| s / per_channel_count.max(1.0)).collect();
    let channel_std = ch_sq.iter().zip(&channel_mean).map(|(q, m)| (q / per_channel_count.max(1.0) - m * m).max(0.0).sqrt()).collect();
    Ok(LatentStats { mean: m, std: var.sqrt(), channel_mean, channel_std, images })
}

/// Writes `dir` as a diffusers `AutoencoderKL` folder (config.json and the weights, whose
/// names already are diffusers'), replacing what was there.
pub fn write_diffusers_folder(dir: &Path, net: &AutoencoderKlConfig, vs: &VarStore, sample_size: u32) -> Result<PathBuf, TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let config = serde_json::json!({
        "_class_name": "AutoencoderKL",
        "_diffusers_version": DIFFUSERS_VERSION,
        "in_channels": net.in_channels,
        "out_channels": net.out_channels,
        "latent_channels": net.latent_channels,
        "block_out_channels": net.block_out_channels,
        "down_block_types": net.down_block_types,
        "up_block_types": net.up_block_types,
        "layers_per_block": net.layers_per_block,
        "norm_num_groups": net.norm_num_groups,
        "act_fn": net.act_fn,
        "sample_size": sample_size,
        "scaling_factor": net.scaling_factor,
        "shift_factor": null,
        "latents_mean": null,
        "latents_std": null,
        "force_upcast": true,
        "use_quant_conv": net.use_quant_conv,
        "use_post_quant_conv": net.use_post_quant_conv,
        "mid_block_add_attention": net.mid_block_add_attention,
    });
    let json = serde_json::to_vec_pretty(&config).map_err(|e| TrainError::Other(e.to_string()))?;
    let config_path = dir.join("config.json");
    difforge_core::write_atomic(&config_path, &json).map_err(|e| TrainError::io(&config_path, e))?;
    difforge_nn::weights::save(vs, &dir.join(WEIGHTS_FILE))?;
    Ok(dir.to_path_buf())
}

/// The file a finished run leaves for `tools/check_vae_export.py`: a few validation images, their
/// posterior means and difforge's decoding of those means, so that diffusers' `AutoencoderKL`
/// loaded from the exported folder can be checked against them.
pub const PARITY_FILE: &str = "vae-parity.safetensors";

/// Writes `images` (top row) above their reconstructions from the posterior mean (bottom row)
/// to `grid`, and the images, means and reconstructions to `parity` ([`PARITY_FILE`]).
pub fn write_reconstructions(vae: &AutoencoderKl, images: &Tensor, grid: &Path, parity: &Path) -> Result<(), TrainError> {
    let _guard = tch::no_grad_guard();
    let mean = vae.encode(images)?.mean;
    let decoded = vae.decode(&mean)?;
    let columns = images.size()[0] as usize;
    let both = Tensor::cat(&[images, &decoded.clamp(-1.0, 1.0)], 0);
    difforge_model::images::save_grid(&both, columns, grid).map_err(|e| TrainError::io(grid, e))?;
    let cpu = |t: &Tensor| t.to_device(tch::Device::Cpu).contiguous();
    let named = [("images".to_string(), cpu(images)), ("latents".to_string(), cpu(&mean)), ("decoded".to_string(), cpu(&decoded))];
    Tensor::write_safetensors(&named, parity).map_err(|e| TrainError::Other(format!("cannot write {}: {e}", parity.display())))
}
