//! transformers' CLIP image encoder, `CLIPVisionModel` / `CLIPVisionModelWithProjection` and the
//! vision half of `CLIPModel`, as transformers 4.57.1 computes them, with its tensor names
//! (`vision_model.embeddings.patch_embedding.weight`, `vision_model.encoder.layers.0.…`,
//! `visual_projection.weight`), and the preprocessing `CLIPImageProcessor` does with OpenAI's
//! settings, on tensors.
//!
//! The image is cut into `patch_size` squares by a convolution without bias; a learnt class token
//! goes in front, the position embedding is added, then `pre_layrnorm`, the pre-norm transformer
//! layers of the text encoder without its causal mask, and `post_layernorm` of the class token
//! (the pooled output), which `visual_projection` maps to the image embedding. Only the model's
//! own `image_size` is taken (transformers' `interpolate_pos_encoding` is not supported).

use super::clip_encoder::{EncoderLayer, LayerShape};
use super::clip_text::ClipActivation;
use super::config_bounds::{sizes_within, ComponentConfig};
use super::load;
use crate::error::NnError;
use difforge_core::ConfigError;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::nn::{self, VarStore};
use tch::{Device, Kind, Tensor};

/// A transformers `CLIPVisionConfig` (a `CLIPVisionModel` folder's `config.json`, or a
/// `CLIPModel` config's `vision_config`), the fields the network needs; others are ignored. A
/// field left out takes transformers' default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_channels: i64,
    /// The side of the square images the network takes.
    pub image_size: i64,
    pub patch_size: i64,
    pub hidden_act: ClipActivation,
    pub layer_norm_eps: f64,
    /// The width of `visual_projection`, used only with the projection. In a `CLIPModel` the
    /// top-level `projection_dim` counts, not this (see [`super::clip_model::ClipConfig`]).
    pub projection_dim: i64,
    /// The model classes the folder was saved from; [`VISION_WITH_PROJECTION`] among them makes
    /// [`ClipVisionModel::load`] build `visual_projection`.
    pub architectures: Vec<String>,
}

impl Default for ClipVisionConfig {
    /// transformers' `CLIPVisionConfig()` defaults (ViT-B/32).
    fn default() -> Self {
        ClipVisionConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: ClipActivation::QuickGelu,
            layer_norm_eps: 1e-5,
            projection_dim: 512,
            architectures: Vec::new(),
        }
    }
}

/// The `architectures` entry that makes a vision folder a projection model.
pub const VISION_WITH_PROJECTION: &str = "CLIPVisionModelWithProjection";

/// The vision embeddings' `position_ids` buffer (0..num_positions), which transformers before
/// 4.31 saved with the weights (OpenAI's CLIP checkpoints have it) and later versions skip on
/// load; derived, not learnt, so dropped on load.
pub const VISION_POSITION_IDS: &str = "vision_model.embeddings.position_ids";

/// OpenAI CLIP's per-channel image mean (`CLIPImageProcessor`'s `image_mean`, `OPENAI_CLIP_MEAN`).
pub const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// OpenAI CLIP's per-channel image standard deviation (`image_std`, `OPENAI_CLIP_STD`).
pub const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

impl ComponentConfig for ClipVisionConfig {
    fn check_sizes(&self) -> Result<(), ConfigError> {
        self.validate()
    }
}

impl ClipVisionConfig {
    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }

    /// Patches along one side: `image_size / patch_size`, rounded down as the convolution does.
    pub fn grid(&self) -> i64 {
        self.image_size / self.patch_size
    }

    /// Positions of the sequence: the patches and the class token.
    pub fn num_positions(&self) -> i64 {
        self.grid() * self.grid() + 1
    }

    /// Whether [`ClipVisionModel::load`] builds `visual_projection` (from `architectures`, as
    /// for the text encoder: `projection_dim` is in every vision config).
    pub fn with_projection(&self) -> bool {
        self.architectures.iter().any(|a| a == VISION_WITH_PROJECTION)
    }

    /// Its encoder layers' shape: every patch attends to every other.
    pub(crate) fn layer_shape(&self) -> LayerShape {
        LayerShape {
            hidden: self.hidden_size,
            heads: self.num_attention_heads,
            intermediate: self.intermediate_size,
            act: self.hidden_act,
            layer_norm_eps: self.layer_norm_eps,
            causal: false,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        // Upper bounds far above any CLIP (ViT-bigG: 1,664 wide, 48 layers, 224 pixels).
        let sizes = [
            ("hidden_size", self.hidden_size, 16384),
            ("intermediate_size", self.intermediate_size, 65536),
            ("num_hidden_layers", self.num_hidden_layers, 256),
            ("num_attention_heads", self.num_attention_heads, 1024),
            ("num_channels", self.num_channels, 64),
            ("image_size", self.image_size, 4096),
            ("patch_size", self.patch_size, 4096),
            ("projection_dim", self.projection_dim, 16384),
        ];
        sizes_within(&sizes)?;
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(ConfigError::new("hidden_size", self.hidden_size, format!("a multiple of num_attention_heads ({})", self.num_attention_heads)));
        }
        if self.patch_size > self.image_size {
            return Err(ConfigError::new("patch_size", self.patch_size, format!("at most image_size ({})", self.image_size)));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(ConfigError::new("layer_norm_eps", self.layer_norm_eps, "a positive number"));
        }
        Ok(())
    }
}

/// What [`ClipVisionModel::forward`] returns.
#[derive(Debug)]
pub struct ClipVisionOutput {
    /// (B, num_positions, hidden): the last layer's output (no norm after it), class token first.
    pub last_hidden_state: Tensor,
    /// (B, hidden): `post_layernorm` of the class token, transformers' `pooler_output`.
    pub pooler_output: Tensor,
    /// (B, projection_dim): `pooler_output` through `visual_projection`, not normalised
    /// (`CLIPModel.get_image_features`, `CLIPVisionModelWithProjection`'s `image_embeds`);
    /// `None` for a network built without the projection.
    pub image_embeds: Option<Tensor>,
}

/// A CLIP image encoder, with or without `visual_projection`.
#[derive(Debug)]
pub struct ClipVisionModel {
    config: ClipVisionConfig,
    class_embedding: Tensor,
    patch_embedding: nn::Conv2D,
    position_embedding: nn::Embedding,
    pre_layrnorm: nn::LayerNorm,
    layers: Vec<EncoderLayer>,
    post_layernorm: nn::LayerNorm,
    visual_projection: Option<nn::Linear>,
    device: Device,
}

impl ClipVisionModel {
    /// Builds the network under `p`, which should be a VarStore's root for the variables to carry
    /// transformers' names (`vision_model.…`, and `visual_projection.weight`, of width
    /// `config.projection_dim`, when `projection` is set).
    pub fn new(p: &nn::Path, config: &ClipVisionConfig, projection: bool) -> Result<ClipVisionModel, NnError> {
        config.validate()?;
        let c = config;
        let vp = p / "vision_model";
        let emb = &vp / "embeddings";
        let conv = nn::ConvConfig { stride: c.patch_size, bias: false, ..Default::default() };
        let layers = (0..c.num_hidden_layers).map(|i| EncoderLayer::new(&(&vp / "encoder" / "layers" / i), &c.layer_shape())).collect();
        let no_bias = nn::LinearConfig { bias: false, ..Default::default() };
        Ok(ClipVisionModel {
            config: c.clone(),
            class_embedding: emb.var("class_embedding", &[c.hidden_size], nn::Init::Randn { mean: 0.0, stdev: 1.0 }),
            patch_embedding: nn::conv2d(&emb / "patch_embedding", c.num_channels, c.hidden_size, c.patch_size, conv),
            position_embedding: nn::embedding(&emb / "position_embedding", c.num_positions(), c.hidden_size, Default::default()),
            pre_layrnorm: c.layer_shape().layer_norm(&vp / "pre_layrnorm"),
            layers,
            post_layernorm: c.layer_shape().layer_norm(&vp / "post_layernorm"),
            visual_projection: projection.then(|| nn::linear(p / "visual_projection", c.hidden_size, c.projection_dim, no_bias)),
            device: p.device(),
        })
    }

    /// Reads a transformers `CLIPVisionModel` or `CLIPVisionModelWithProjection` folder
    /// (`config.json` and `model.safetensors`; saved by transformers 4 or 5) onto `device`, strictly (only
    /// [`VISION_POSITION_IDS`] may be left over), the variables frozen. For a whole `CLIPModel`
    /// folder use [`super::clip_model::ClipModel::load`].
    pub fn load(dir: &Path, device: Device) -> Result<ClipVisionModel, NnError> {
        let config: ClipVisionConfig = load::read_config(dir)?;
        config.validate().map_err(|e| NnError::Load { path: dir.join("config.json"), reason: e.to_string() })?;
        let mut vs = VarStore::new(device);
        let model = ClipVisionModel::new(&vs.root(), &config, config.with_projection())?;
        let files = load::weight_files(dir, "model", None)?;
        // transformers 5 saves a `CLIPVisionModel` made in it without `vision_model.`.
        let mut tensors = load::prefixed_if_flat(load::read_tensors(&files)?, "vision_model.", "embeddings.patch_embedding.weight");
        tensors.remove(VISION_POSITION_IDS);
        load::load_strict(&vs, &tensors, dir)?;
        vs.freeze();
        Ok(model)
    }

    pub fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    /// Encodes preprocessed images (B, num_channels, image_size, image_size), as
    /// `CLIPImageProcessor` gives them (see [`preprocess`]); converted to float32 on the model's
    /// device.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<ClipVisionOutput, NnError> {
        let c = &self.config;
        let size = pixel_values.size();
        let expected = [c.num_channels, c.image_size, c.image_size];
        if size.len() != 4 || size[0] < 1 || size[1..] != expected {
            return Err(NnError::Invalid(format!(
                "CLIP image encoder pixel_values: expected shape (batch, {}, {}, {}), got {size:?}",
                expected[0], expected[1], expected[2]
            )));
        }
        if !pixel_values.is_floating_point() {
            return Err(NnError::Invalid(format!("CLIP image encoder pixel_values: expected floating-point values, got {:?}", pixel_values.kind())));
        }
        let batch = size[0];
        let x = pixel_values.to_device(self.device).to_kind(Kind::Float);
        // (B, hidden, grid, grid) -> (B, grid * grid, hidden), patches in row-major order.
        let patches = x.apply(&self.patch_embedding).flatten(2, 3).transpose(1, 2);
        let class = self.class_embedding.expand([batch, 1, c.hidden_size], false);
        let embeddings = Tensor::cat(&[class, patches], 1) + &self.position_embedding.ws;
        let mut h = embeddings.apply(&self.pre_layrnorm);
        for layer in &self.layers {
            h = layer.forward(&h);
        }
        let pooler_output = h.select(1, 0).apply(&self.post_layernorm);
        let image_embeds = self.visual_projection.as_ref().map(|proj| pooler_output.apply(proj));
        Ok(ClipVisionOutput { last_hidden_state: h, pooler_output, image_embeds })
    }
}

/// The height and width `CLIPImageProcessor` resizes an `h` x `w` image to: the shorter side to
/// `shortest_edge`, the longer in proportion, rounded down (transformers'
/// `get_resize_output_image_size` with `default_to_square=False`).
pub fn resized_size(h: i64, w: i64, shortest_edge: i64) -> (i64, i64) {
    let long_side = |long: i64, short: i64| (shortest_edge as f64 * long as f64 / short as f64) as i64;
    if w <= h {
        (long_side(h, w), shortest_edge)
    } else {
        (shortest_edge, long_side(w, h))
    }
}

/// Images (N, 3, H, W) with values in [-1, 1] (a generator's output) to CLIP's `pixel_values`
/// (N, 3, `image_size`, `image_size`), as `CLIPImageProcessor` with OpenAI's settings prepares
/// the same images saved as 8-bit files: values to [0, 1] and rounded to 8 bits; the shorter side
/// resized to `image_size` (bicubic; see below); rounded to 8 bits again, as PIL returns an 8-bit
/// image; the centre `image_size` square cut out (top-left offset rounded down, as transformers
/// does); normalised with [`OPENAI_CLIP_MEAN`] and [`OPENAI_CLIP_STD`].
///
/// The resize is libtorch's antialiased bicubic (`_upsample_bicubic2d_aa`, torchvision's
/// `antialias=True`), the same filter as PIL's `BICUBIC` (a = -0.5, widened when shrinking), but
/// computed in float rather than PIL's fixed point: pixels can differ from `CLIPImageProcessor`'s
/// by one 8-bit level (about 0.015 after normalisation), which moves a CLIP score by far less than
/// its sampling noise. The test against transformers' output bounds the difference.
pub fn preprocess(images: &Tensor, image_size: i64) -> Result<Tensor, NnError> {
    let size = images.size();
    if size.len() != 4 || size[0] < 1 || size[1] != 3 || size[2] < 1 || size[3] < 1 {
        return Err(NnError::Invalid(format!("CLIP preprocessing: expected images of shape (N, 3, H, W), got {size:?}")));
    }
    if !images.is_floating_point() {
        return Err(NnError::Invalid(format!("CLIP preprocessing: expected floating-point images in [-1, 1], got {:?}", images.kind())));
    }
    if image_size < 1 {
        return Err(NnError::Invalid(format!("CLIP preprocessing: image_size {image_size} is not positive")));
    }
    let to_8_bits = |x: &Tensor| (x.clamp(0.0, 1.0) * 255.0).round() / 255.0;
    let x = to_8_bits(&((images.to_kind(Kind::Float) + 1.0) / 2.0));
    let (h, w) = (size[2], size[3]);
    let (rh, rw) = resized_size(h, w, image_size);
    let x = if (rh, rw) == (h, w) { x } else { to_8_bits(&x.internal_upsample_bicubic2d_aa([rh, rw], false, None, None)) };
    let (top, left) = ((rh - image_size) / 2, (rw - image_size) / 2);
    let x = x.narrow(2, top, image_size).narrow(3, left, image_size);
    let channel = |v: &[f64; 3]| Tensor::from_slice(v).to_kind(Kind::Float).to_device(x.device()).view([1, 3, 1, 1]);
    Ok((&x - channel(&OPENAI_CLIP_MEAN)) / channel(&OPENAI_CLIP_STD))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sd::clip_model::tests::{assert_close, fixture, refs};
    use crate::sd::clip_model::ClipConfig;

    #[test]
    fn clip_vision_model_with_projection_matches_transformers() {
        // The vision half of the CLIPModel fixture, as a CLIPVisionModelWithProjection folder.
        let dir = tempfile::tempdir().unwrap();
        let clip: ClipConfig = ClipConfig::read(&fixture()).unwrap();
        let config = ClipVisionConfig { projection_dim: clip.projection_dim, architectures: vec![VISION_WITH_PROJECTION.to_string()], ..clip.vision_config };
        std::fs::write(dir.path().join("config.json"), serde_json::to_string(&config).unwrap()).unwrap();
        let tensors = Tensor::read_safetensors(fixture().join("model.safetensors")).unwrap();
        let vision: Vec<_> = tensors.into_iter().filter(|(k, _)| k.starts_with("vision_model.") || k == "visual_projection.weight").collect();
        Tensor::write_safetensors(&vision, dir.path().join("model.safetensors")).unwrap();

        let model = ClipVisionModel::load(dir.path(), Device::Cpu).unwrap();
        let r = refs();
        let out = tch::no_grad(|| model.forward(&r["pixel_values"])).unwrap();
        assert_close("vision.last_hidden_state", &out.last_hidden_state, &r["vision.last_hidden_state"]);
        assert_close("vision.pooler_output", &out.pooler_output, &r["vision.pooler_output"]);
        assert_close("image_embeds", out.image_embeds.as_ref().unwrap(), &r["image_embeds"]);

        // Without the projection in `architectures`, visual_projection.weight is left over.
        let config = ClipVisionConfig { architectures: Vec::new(), ..config };
        std::fs::write(dir.path().join("config.json"), serde_json::to_string(&config).unwrap()).unwrap();
        let e = ClipVisionModel::load(dir.path(), Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("not part of the model: `visual_projection.weight`"), "{e}");
    }

    #[test]
    fn clip_vision_refuses_other_image_sizes() {
        let config = ClipVisionConfig {
            hidden_size: 8,
            intermediate_size: 8,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            image_size: 8,
            patch_size: 4,
            ..Default::default()
        };
        let model = ClipVisionModel::new(&VarStore::new(Device::Cpu).root(), &config, false).unwrap();
        assert_eq!(model.forward(&Tensor::zeros([2, 3, 8, 8], (Kind::Float, Device::Cpu))).unwrap().last_hidden_state.size(), [2, 5, 8]);
        for shape in [vec![1, 3, 8, 9], vec![3, 8, 8], vec![1, 1, 8, 8]] {
            let e = model.forward(&Tensor::zeros(shape.as_slice(), (Kind::Float, Device::Cpu))).unwrap_err().to_string();
            assert!(e.contains("expected shape (batch, 3, 8, 8)"), "{e}");
        }
        let bad = ClipVisionConfig { patch_size: 9, ..config };
        assert!(ClipVisionModel::new(&VarStore::new(Device::Cpu).root(), &bad, false).unwrap_err().to_string().contains("patch_size"));
    }

    #[test]
    fn clip_vision_preprocess_is_close_to_clip_image_processor() {
        assert_eq!(resized_size(52, 40, 30), (39, 30));
        assert_eq!(resized_size(40, 52, 30), (30, 39));
        assert_eq!(resized_size(224, 224, 224), (224, 224));
        let r = refs();
        let image = &r["preprocess.image"];
        assert_eq!(image.kind(), Kind::Uint8);
        let images = image.to_kind(Kind::Float) / 127.5 - 1.0;
        let ours = preprocess(&images, 30).unwrap();
        let theirs = &r["preprocess.pixel_values"];
        assert_eq!(ours.size(), theirs.size());
        let diff = (&ours - theirs).abs();
        let (worst, mean) = (diff.max().double_value(&[]), diff.mean(Kind::Double).double_value(&[]));
        // At most one 8-bit level (1 / 255 / std, 0.0150 in the channel of the smallest std), as
        // the resize rounds differently from PIL's fixed point in a few pixels (measured: worst
        // 0.0150, mean 0.0028).
        let level = 1.0 / 255.0 / OPENAI_CLIP_STD[1];
        assert!(worst <= level * 1.001 && mean <= 0.004, "worst {worst}, mean {mean}");
        // An image already at the model's size is only rescaled and normalised: exact.
        let crop = images.narrow(2, 5, 30).narrow(3, 5, 30);
        let q = ((&crop + 1.0) * 127.5).round() / 255.0;
        let channel = |v: &[f64; 3]| Tensor::from_slice(v).to_kind(Kind::Float).view([1, 3, 1, 1]);
        assert_close("unresized", &preprocess(&crop, 30).unwrap(), &((q - channel(&OPENAI_CLIP_MEAN)) / channel(&OPENAI_CLIP_STD)));
        assert!(preprocess(&Tensor::zeros([1, 4, 8, 8], (Kind::Float, Device::Cpu)), 30).is_err());
    }
}
