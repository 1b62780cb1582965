//! diffusers' (0.35.2) `AutoencoderKL`, the Stable Diffusion VAE: images to a diagonal Gaussian
//! over latents (`encode`) and latents back to images (`decode`), whole, one image at a time
//! (`decode_sliced`) or in overlapping, blended tiles (`decode_tiled`) as diffusers'
//! `enable_slicing` and `enable_tiling` do. Loads a diffusers `vae/` folder as it is.

use super::config_bounds::{each_within, fits_in_memory, sizes_within, within, ComponentConfig};
use super::load::{load_component, read_config};
use super::vae_blocks::{Decoder, Encoder, VaeShape};
use crate::error::NnError;
use difforge_core::ConfigError;
use serde::Deserialize;
use std::path::Path;
use tch::nn::{self, VarStore};
use tch::{Device, Tensor};

/// The fields of a diffusers `AutoencoderKL` `config.json` this implementation reads; a missing
/// field takes diffusers' default, and the rest (`force_upcast`, `sample_size`, `latents_mean`,
/// ...) are ignored: they steer pipelines, not the network.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AutoencoderKlConfig {
    pub in_channels: i64,
    pub out_channels: i64,
    pub latent_channels: i64,
    pub block_out_channels: Vec<i64>,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub layers_per_block: i64,
    pub norm_num_groups: i64,
    pub act_fn: String,
    /// UNet latents are `(z - shift_factor) * scaling_factor`; see [`AutoencoderKl::to_latents`].
    pub scaling_factor: f64,
    pub shift_factor: Option<f64>,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
}

impl Default for AutoencoderKlConfig {
    fn default() -> Self {
        AutoencoderKlConfig {
            in_channels: 3,
            out_channels: 3,
            latent_channels: 4,
            block_out_channels: vec![64],
            down_block_types: vec!["DownEncoderBlock2D".into()],
            up_block_types: vec!["UpDecoderBlock2D".into()],
            layers_per_block: 1,
            norm_num_groups: 32,
            act_fn: "silu".into(),
            scaling_factor: 0.18215,
            shift_factor: None,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

/// More levels would overflow the downscale factor long before any real VAE needs them.
const MAX_LEVELS: usize = 16;

impl ComponentConfig for AutoencoderKlConfig {
    /// Upper bounds far above any VAE (SD's: 4 levels up to 512 channels), and the memory the
    /// resnets alone would need.
    fn check_sizes(&self) -> Result<(), ConfigError> {
        within("block_out_channels (its length)", self.block_out_channels.len() as i64, 1, MAX_LEVELS as i64)?;
        each_within("block_out_channels", &self.block_out_channels, 1, 8192)?;
        sizes_within(&[
            ("in_channels", self.in_channels, 64),
            ("out_channels", self.out_channels, 64),
            ("latent_channels", self.latent_channels, 256),
            ("layers_per_block", self.layers_per_block, 32),
            ("norm_num_groups", self.norm_num_groups, 8192),
        ])?;
        // Encoder and decoder: `layers` and `layers + 1` resnets of two 3x3 convolutions a level.
        let per_level = 18.0 * (2.0 * self.layers_per_block as f64 + 1.0);
        fits_in_memory(self.block_out_channels.iter().map(|&c| (c as f64).powi(2) * per_level).sum())
    }
}

impl AutoencoderKlConfig {
    /// How many pixels one latent spans per side: 2 per level after the first (8 for SD).
    pub fn downscale(&self) -> i64 {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    /// Refuses what this implementation does not build (another activation or block type) and
    /// shapes libtorch would fail on mid-forward; the error names the field.
    pub fn validate(&self) -> Result<(), NnError> {
        self.check_sizes()?;
        let bad = |field: &str, why: String| Err(NnError::Invalid(format!("config field `{field}`: {why}")));
        if self.act_fn != "silu" {
            return bad("act_fn", format!("`{}` is not supported, only `silu`", self.act_fn));
        }
        let levels = self.block_out_channels.len();
        if levels == 0 || levels > MAX_LEVELS {
            return bad("block_out_channels", format!("has {levels} entries, 1 to {MAX_LEVELS} are supported"));
        }
        for (field, types, only) in
            [("down_block_types", &self.down_block_types, "DownEncoderBlock2D"), ("up_block_types", &self.up_block_types, "UpDecoderBlock2D")]
        {
            if types.len() != levels {
                return bad(field, format!("has {} entries, block_out_channels has {levels}", types.len()));
            }
            if let Some(other) = types.iter().find(|t| *t != only) {
                return bad(field, format!("`{other}` is not supported, only `{only}`"));
            }
        }
        for (field, value) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
            ("layers_per_block", self.layers_per_block),
            ("norm_num_groups", self.norm_num_groups),
        ] {
            if value < 1 {
                return bad(field, format!("is {value}, it must be at least 1"));
            }
        }
        if let Some(c) = self.block_out_channels.iter().find(|&&c| c < 1 || c % self.norm_num_groups != 0) {
            return bad("block_out_channels", format!("{c} is not a positive multiple of norm_num_groups ({})", self.norm_num_groups));
        }
        if !self.scaling_factor.is_finite() || self.scaling_factor == 0.0 {
            return bad("scaling_factor", format!("is {}, it must be finite and not zero", self.scaling_factor));
        }
        if let Some(shift) = self.shift_factor.filter(|s| !s.is_finite()) {
            return bad("shift_factor", format!("is {shift}, it must be finite"));
        }
        Ok(())
    }
}

/// diffusers' `DiagonalGaussianDistribution`: what `encode` returns.
#[derive(Debug)]
pub struct DiagonalGaussian {
    pub mean: Tensor,
    /// Clamped to [-30, 20] as diffusers does, so that `exp` neither underflows to a zero
    /// standard deviation nor overflows.
    pub logvar: Tensor,
}

impl DiagonalGaussian {
    /// Splits the encoder's (B, 2C, H, W) moments into mean and log variance along channels.
    pub fn from_moments(moments: &Tensor) -> Result<DiagonalGaussian, NnError> {
        let size = moments.size();
        if size.len() != 4 || size[1] % 2 != 0 {
            return Err(NnError::Invalid(format!("moments must be (B, 2C, H, W), got {size:?}")));
        }
        let c = size[1] / 2;
        Ok(DiagonalGaussian { mean: moments.narrow(1, 0, c), logvar: moments.narrow(1, c, c).clamp(-30.0, 20.0) })
    }

    pub fn std(&self) -> Tensor {
        (&self.logvar * 0.5).exp()
    }

    /// `mean + std * noise`; the caller draws `noise` (standard normal, the mean's shape) so that
    /// it controls the generator.
    pub fn sample(&self, noise: &Tensor) -> Result<Tensor, NnError> {
        if noise.size() != self.mean.size() || noise.device() != self.mean.device() {
            let (size, device) = (self.mean.size(), self.mean.device());
            let got = (noise.size(), noise.device());
            return Err(NnError::Invalid(format!("noise must have the mean's shape {size:?} on {device:?}, got {got:?}")));
        }
        Ok(&self.mean + self.std() * noise)
    }

    /// The most likely latents: the mean.
    pub fn mode(&self) -> Tensor {
        self.mean.shallow_clone()
    }
}

#[derive(Debug)]
pub struct AutoencoderKl {
    config: AutoencoderKlConfig,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<nn::Conv2D>,
    post_quant_conv: Option<nn::Conv2D>,
    downscale: i64,
}

impl AutoencoderKl {
    /// Builds the network under `p`, which should be a VarStore's root for the variables to carry
    /// diffusers' names (`encoder.…`, `decoder.…`, `quant_conv.…`, `post_quant_conv.…`).
    pub fn new(p: &nn::Path, config: &AutoencoderKlConfig) -> Result<AutoencoderKl, NnError> {
        config.validate()?;
        let shape = VaeShape {
            block_out_channels: config.block_out_channels.clone(),
            layers_per_block: config.layers_per_block,
            groups: config.norm_num_groups,
            mid_block_attention: config.mid_block_add_attention,
        };
        let latent = config.latent_channels;
        let encoder = Encoder::new(p / "encoder", config.in_channels, 2 * latent, &shape);
        let decoder = Decoder::new(p / "decoder", latent, config.out_channels, &shape);
        let quant_conv = config.use_quant_conv.then(|| nn::conv2d(p / "quant_conv", 2 * latent, 2 * latent, 1, Default::default()));
        let post_quant_conv = config.use_post_quant_conv.then(|| nn::conv2d(p / "post_quant_conv", latent, latent, 1, Default::default()));
        let downscale = config.downscale();
        Ok(AutoencoderKl { config: config.clone(), encoder, decoder, quant_conv, post_quant_conv, downscale })
    }

    /// Loads a diffusers `vae/` folder (`config.json` and `diffusion_pytorch_model.safetensors`)
    /// in float32 on `device`, frozen: Stable Diffusion training keeps the VAE fixed. To train
    /// it, build it with [`AutoencoderKl::new`] on a VarStore of one's own and load the weights
    /// with [`load_component`].
    pub fn load(dir: &Path, device: Device) -> Result<AutoencoderKl, NnError> {
        let config: AutoencoderKlConfig = read_config(dir)?;
        let mut vs = VarStore::new(device);
        let vae = AutoencoderKl::new(&vs.root(), &config).map_err(|e| match e {
            NnError::Invalid(reason) => NnError::Load { path: dir.join("config.json"), reason },
            other => other,
        })?;
        load_component(&vs, dir, "diffusion_pytorch_model", None)?;
        vs.freeze();
        Ok(vae)
    }

    pub fn config(&self) -> &AutoencoderKlConfig {
        &self.config
    }

    /// Where the weights are.
    pub fn device(&self) -> tch::Device {
        self.decoder.conv_in_weight().device()
    }

    /// How many pixels one latent spans per side: 2 per level after the first (8 for SD).
    pub fn downscale(&self) -> i64 {
        self.downscale
    }

    /// Encoder samples (or modes) to the UNet's latent scale: `(z - shift) * scaling`.
    pub fn to_latents(&self, z: &Tensor) -> Tensor {
        (z - self.config.shift_factor.unwrap_or(0.0)) * self.config.scaling_factor
    }

    /// The UNet's latents back to what `decode` takes: `latents / scaling + shift`.
    pub fn from_latents(&self, latents: &Tensor) -> Tensor {
        latents / self.config.scaling_factor + self.config.shift_factor.unwrap_or(0.0)
    }

    /// A (B, C, H, W) input with the expected channels on the weights' device and kind; H and W
    /// multiples of `multiple` (the encoder's right-bottom-padded downsamplers need at least two
    /// pixels at every level, which multiples of the downscale guarantee).
    fn check(&self, what: &str, x: &Tensor, channels: i64, multiple: i64) -> Result<(), NnError> {
        let size = x.size();
        let fits = |n: i64| n > 0 && n % multiple == 0;
        if !matches!(size.as_slice(), &[b, c, h, w] if b > 0 && c == channels && fits(h) && fits(w)) {
            let rule = format!("(B, {channels}, H, W) with H and W positive multiples of {multiple}");
            return Err(NnError::Invalid(format!("{what} must be {rule}, got {size:?}")));
        }
        // From a weight rather than remembered: the VarStore may have moved or converted it since.
        let weight = self.decoder.conv_in_weight();
        if x.kind() != weight.kind() || x.device() != weight.device() {
            let want = (weight.kind(), weight.device());
            return Err(NnError::Invalid(format!("{what} must be {want:?} as the VAE's weights, got {:?}", (x.kind(), x.device()))));
        }
        Ok(())
    }

    /// Images in [-1, 1], (B, in_channels, H, W), H and W multiples of [`Self::downscale`].
    pub fn encode(&self, images: &Tensor) -> Result<DiagonalGaussian, NnError> {
        self.check("images", images, self.config.in_channels, self.downscale)?;
        let h = self.encoder.forward(images);
        let h = match &self.quant_conv {
            Some(conv) => h.apply(conv),
            None => h,
        };
        DiagonalGaussian::from_moments(&h)
    }

    /// Latents at the encoder's scale (see [`Self::from_latents`]), (B, latent_channels, h, w),
    /// to images (B, out_channels, h * downscale, w * downscale).
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor, NnError> {
        self.check("latents", latents, self.config.latent_channels, 1)?;
        Ok(self.decode_checked(latents))
    }

    fn decode_checked(&self, z: &Tensor) -> Tensor {
        match &self.post_quant_conv {
            Some(conv) => self.decoder.forward(&z.apply(conv)),
            None => self.decoder.forward(z),
        }
    }

    /// [`Self::decode`] one batch element at a time, so that activation memory is that of one
    /// image (under `tch::no_grad`; with gradients every slice's graph is kept anyway).
    pub fn decode_sliced(&self, latents: &Tensor) -> Result<Tensor, NnError> {
        self.check("latents", latents, self.config.latent_channels, 1)?;
        let images: Vec<Tensor> = latents.split(1, 0).iter().map(|z| self.decode_checked(z)).collect();
        Ok(Tensor::cat(&images, 0))
    }

    /// diffusers' `tiled_decode`: latent tiles of `tile_size / downscale` a side, `tile_size *
    /// (1 - overlap)` pixels apart, each decoded alone, then every tile's first `tile_size *
    /// overlap` rows and columns blended linearly into the tiles above and to the left. diffusers
    /// takes `tile_size` from the config's `sample_size` (512 for SD 1.5) and `overlap` 0.25.
    /// Not equal to `decode`: each tile's attention sees only that tile.
    pub fn decode_tiled(&self, latents: &Tensor, tile_size: i64, overlap: f64) -> Result<Tensor, NnError> {
        self.check("latents", latents, self.config.latent_channels, 1)?;
        if !(0.0..1.0).contains(&overlap) {
            return Err(NnError::Invalid(format!("tile overlap must be in [0, 1), got {overlap}")));
        }
        let tile = tile_size / self.downscale;
        let stride = (tile as f64 * (1.0 - overlap)) as i64;
        let blend = (tile_size as f64 * overlap) as i64;
        let keep = tile_size - blend;
        // diffusers crops every tile to `keep` pixels but moves `stride` latents on: unless the
        // two agree the tiles would overlap or leave gaps, and the image would have the wrong size.
        if stride < 1 || keep != stride * self.downscale {
            let why = format!("{} pixels apart but {keep} kept of each", stride * self.downscale);
            return Err(NnError::Invalid(format!("tile size {tile_size} with overlap {overlap} does not tile the image ({why})")));
        }
        let (_, _, height, width) = latents.size4().map_err(|e| NnError::Invalid(e.to_string()))?;
        let mut above: Vec<Tensor> = Vec::new();
        let mut rows = Vec::new();
        for i in (0..height).step_by(stride as usize) {
            let mut row: Vec<Tensor> = Vec::new();
            let mut kept = Vec::new();
            for (j, x) in (0..width).step_by(stride as usize).enumerate() {
                let z = latents.narrow(2, i, tile.min(height - i)).narrow(3, x, tile.min(width - x));
                let mut decoded = self.decode_checked(&z);
                if let Some(up) = above.get(j) {
                    decoded = blend_into(up, &decoded, blend, 2);
                }
                if let Some(left) = row.last() {
                    decoded = blend_into(left, &decoded, blend, 3);
                }
                let (h, w) = (decoded.size()[2], decoded.size()[3]);
                kept.push(decoded.narrow(2, 0, keep.min(h)).narrow(3, 0, keep.min(w)));
                row.push(decoded);
            }
            rows.push(Tensor::cat(&kept, 3));
            above = row;
        }
        Ok(Tensor::cat(&rows, 2))
    }
}

/// diffusers' `blend_v` (dim 2) and `blend_h` (dim 3): `b`'s first `extent` rows or columns
/// fade linearly from `a`'s last ones to `b`'s own. `a` is already blended itself, as diffusers
/// blends in place, tile by tile.
fn blend_into(a: &Tensor, b: &Tensor, extent: i64, dim: i64) -> Tensor {
    let (len_a, len_b) = (a.size()[dim as usize], b.size()[dim as usize]);
    let extent = extent.min(len_a).min(len_b);
    if extent == 0 {
        return b.shallow_clone();
    }
    let mut shape = [1, 1, 1, 1];
    shape[dim as usize] = extent;
    let weight = (Tensor::arange(extent, (b.kind(), b.device())) / extent as f64).view(shape);
    let faded = a.narrow(dim, len_a - extent, extent) * (1.0 - &weight) + b.narrow(dim, 0, extent) * &weight;
    Tensor::cat(&[faded, b.narrow(dim, extent, len_b - extent)], dim)
}
