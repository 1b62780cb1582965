//! transformers' CLIP text encoder, `CLIPTextModel` (SD 1.x/2.x, SDXL's first encoder) and
//! `CLIPTextModelWithProjection` (SDXL's second encoder), as transformers 4.57.1 computes them,
//! with its tensor names (`text_model.encoder.layers.0.self_attn.q_proj.weight`, ...), so that a
//! pipeline's `text_encoder/` folder loads as it is.
//!
//! Pre-norm transformer layers with causal self-attention; `last_hidden_state` is the last
//! layer's output through `final_layer_norm`, and the pooled output is that at each prompt's end
//! token (through `text_projection` in the projection model). No attention mask is taken: the
//! Stable Diffusion pipelines pass none (their encoders' configs do not ask for one), padding
//! with the end token instead, which the causal mask keeps from changing the prompt's tokens.

use super::clip_encoder::{EncoderLayer, LayerShape};
use super::config_bounds::{fits_in_memory, sizes_within};
use super::lazy_tensor::LazyTensor;
use super::load;
use crate::error::NnError;
use crate::lora::LoraSpec;
use difforge_core::ConfigError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::nn::{self, VarStore};
use tch::{Device, Kind, Tensor};

difforge_core::choice! {
    /// The MLP non-linearity (transformers' `hidden_act`); other values are refused when the
    /// config is read, naming the value.
    pub enum ClipActivation {
        /// x * sigmoid(1.702 x): OpenAI's CLIP, SD 1.x and SDXL's first encoder.
        QuickGelu = "quick_gelu",
        /// The exact (erf) GELU: OpenCLIP's encoders, SD 2.x and SDXL's second encoder.
        Gelu = "gelu",
    }
}

impl ClipActivation {
    pub(crate) fn apply(self, x: &Tensor) -> Tensor {
        match self {
            ClipActivation::QuickGelu => x * (x * 1.702).sigmoid(),
            ClipActivation::Gelu => x.gelu("none"),
        }
    }
}

/// A transformers `CLIPTextConfig` (`config.json`), the fields the network needs; others are
/// ignored. A field left out takes transformers' default, as transformers would load it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub max_position_embeddings: i64,
    pub hidden_act: ClipActivation,
    pub layer_norm_eps: f64,
    pub bos_token_id: i64,
    /// Where the pooled output is read; 2 selects transformers' legacy rule (see
    /// [`ClipTextModel::eos_positions`]).
    pub eos_token_id: i64,
    pub pad_token_id: i64,
    /// The width of `text_projection`, used only by the projection model.
    pub projection_dim: i64,
    /// The model classes the folder was saved from; `CLIPTextModelWithProjection` among them
    /// makes the network carry `text_projection` (see [`ClipTextConfig::with_projection`]).
    pub architectures: Vec<String>,
}

impl Default for ClipTextConfig {
    /// transformers' `CLIPTextConfig()` defaults.
    fn default() -> Self {
        ClipTextConfig {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: ClipActivation::QuickGelu,
            layer_norm_eps: 1e-5,
            bos_token_id: 49406,
            eos_token_id: 49407,
            pad_token_id: 1,
            projection_dim: 512,
            architectures: Vec::new(),
        }
    }
}

/// The `architectures` entry that makes a folder a projection model.
pub const WITH_PROJECTION: &str = "CLIPTextModelWithProjection";

impl super::config_bounds::ComponentConfig for ClipTextConfig {
    fn check_sizes(&self) -> Result<(), ConfigError> {
        self.validate()
    }
}

impl ClipTextConfig {
    /// Whether the network has `text_projection`. Chosen from `architectures`, which
    /// transformers writes on every save, rather than from `projection_dim`, which a plain
    /// `CLIPTextModel` config carries too (at its default) though it has no projection.
    pub fn with_projection(&self) -> bool {
        self.architectures.iter().any(|a| a == WITH_PROJECTION)
    }

    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }

    /// Its encoder layers' shape: causal self-attention.
    pub(crate) fn layer_shape(&self) -> LayerShape {
        LayerShape {
            hidden: self.hidden_size,
            heads: self.num_attention_heads,
            intermediate: self.intermediate_size,
            act: self.hidden_act,
            layer_norm_eps: self.layer_norm_eps,
            causal: true,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        // Upper bounds far above any CLIP (OpenCLIP bigG: 1,280 wide, 32 layers, 77 positions).
        let sizes = [
            ("vocab_size", self.vocab_size, 1 << 20),
            ("hidden_size", self.hidden_size, 16384),
            ("intermediate_size", self.intermediate_size, 65536),
            ("num_hidden_layers", self.num_hidden_layers, 256),
            ("num_attention_heads", self.num_attention_heads, 1024),
            ("max_position_embeddings", self.max_position_embeddings, 65536),
            ("projection_dim", self.projection_dim, 16384),
        ];
        sizes_within(&sizes)?;
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(ConfigError::new("hidden_size", self.hidden_size, format!("a multiple of num_attention_heads ({})", self.num_attention_heads)));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(ConfigError::new("layer_norm_eps", self.layer_norm_eps, "a positive number"));
        }
        let (h, layers) = (self.hidden_size as f64, self.num_hidden_layers as f64);
        let embeddings = (self.vocab_size + self.max_position_embeddings) as f64 * h;
        fits_in_memory(embeddings + layers * (4.0 * h * h + 2.0 * h * self.intermediate_size as f64))
    }

    /// Ok when every token id is in the vocabulary (0..vocab_size), or an error naming the span
    /// found: an id outside it would make libtorch fail (on CUDA: a device-side assert that
    /// ends the process). Reads the ids on the host, so call it where they are made, on the CPU:
    /// [`ClipTextModel::forward`] checks ids it is given there, and ids given on a GPU are the
    /// caller's to have checked, since reading them back would wait for the GPU (and break CUDA
    /// graph capture).
    pub fn check_token_ids(&self, ids: &Tensor) -> Result<(), NnError> {
        if ids.numel() == 0 {
            return Ok(());
        }
        let (lo, hi) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
        if lo < 0 || hi >= self.vocab_size {
            return Err(NnError::Invalid(format!("CLIP text encoder input_ids: ids span {lo}..={hi}, outside the vocabulary 0..{}", self.vocab_size)));
        }
        Ok(())
    }
}

/// What [`ClipTextModel::forward`] returns.
#[derive(Debug)]
pub struct ClipTextOutput {
    /// (B, L, hidden): the last layer's output through `final_layer_norm`; SD 1.x/2.x's
    /// `encoder_hidden_states`.
    pub last_hidden_state: Tensor,
    /// (B, hidden) `pooler_output` for `CLIPTextModel`: `last_hidden_state` at each prompt's end
    /// token. (B, projection_dim) `text_embeds` for the projection model: that, through
    /// `text_projection`; SDXL's `pooled_prompt_embeds`.
    pub pooled: Tensor,
    /// transformers' `hidden_states`: the embeddings' output, then each layer's, without the
    /// final norm (num_hidden_layers + 1 entries). SDXL conditions on `hidden_states[-2]` as it is.
    pub hidden_states: Vec<Tensor>,
}

/// A CLIP text encoder, with or without `text_projection`.
#[derive(Debug)]
pub struct ClipTextModel {
    config: ClipTextConfig,
    token_embedding: nn::Embedding,
    position_embedding: nn::Embedding,
    layers: Vec<EncoderLayer>,
    final_layer_norm: nn::LayerNorm,
    text_projection: Option<nn::Linear>,
}

/// A buffer (0..max_position_embeddings) that transformers before 4.31 saved with the weights
/// and later versions skip on load. It is derived, not learnt (and some old SD checkpoints hold
/// it corrupted, as floats), so it is dropped on load rather than made a variable.
pub const POSITION_IDS: &str = "text_model.embeddings.position_ids";

/// Loads a text encoder's weights from `dir` (`model.safetensors`, its `variant`, or shards)
/// into `vs`, strictly as [`load::load_strict`] does, ignoring only [`POSITION_IDS`].
pub fn load_weights(vs: &VarStore, dir: &Path, variant: Option<&str>) -> Result<(), NnError> {
    load::load_strict(vs, &read_weights(dir, variant)?, dir)
}

/// A text encoder folder's tensors under transformers 4's names (`text_model.…`), without
/// [`POSITION_IDS`]. transformers 5 made `CLIPTextModel` flat: a model created in it saves its
/// weights without the `text_model.` prefix (`embeddings.…`, `encoder.…`, `final_layer_norm.…`);
/// `CLIPTextModelWithProjection` and every 4.x folder keep it. Both load the same.
pub fn read_weights(dir: &Path, variant: Option<&str>) -> Result<HashMap<String, (LazyTensor, PathBuf)>, NnError> {
    let files = load::weight_files(dir, "model", variant)?;
    let mut tensors = load::prefixed_if_flat(load::read_tensors(&files)?, "text_model.", "embeddings.token_embedding.weight");
    tensors.remove(POSITION_IDS);
    Ok(tensors)
}

impl ClipTextModel {
    /// Builds the network under `p`, which should be a VarStore's root for the variables to
    /// carry transformers' names (`text_model.…`, `text_projection.weight`).
    pub fn new(p: &nn::Path, config: &ClipTextConfig) -> Result<ClipTextModel, NnError> {
        ClipTextModel::with_lora(p, config, None)
    }

    /// With LoRA adapters (`….self_attn.q_proj.lora_down.weight`, …) on the q, k, v and out
    /// projections of every layer when `lora` is given.
    pub fn with_lora(p: &nn::Path, config: &ClipTextConfig, lora: Option<&LoraSpec>) -> Result<ClipTextModel, NnError> {
        config.validate()?;
        let c = config;
        let tp = p / "text_model";
        let emb = &tp / "embeddings";
        let layers = (0..c.num_hidden_layers).map(|i| EncoderLayer::with_lora(&(&tp / "encoder" / "layers" / i), &c.layer_shape(), lora)).collect();
        let no_bias = nn::LinearConfig { bias: false, ..Default::default() };
        Ok(ClipTextModel {
            config: c.clone(),
            token_embedding: nn::embedding(&emb / "token_embedding", c.vocab_size, c.hidden_size, Default::default()),
            position_embedding: nn::embedding(&emb / "position_embedding", c.max_position_embeddings, c.hidden_size, Default::default()),
            layers,
            final_layer_norm: c.layer_shape().layer_norm(&tp / "final_layer_norm"),
            text_projection: c.with_projection().then(|| nn::linear(p / "text_projection", c.hidden_size, c.projection_dim, no_bias)),
        })
    }

    /// Reads a transformers text-encoder folder (`config.json` and `model.safetensors`) onto
    /// `device`. The variables are frozen: loaded this way the encoder is a fixed condition
    /// encoder, as in Stable Diffusion training; to fine-tune it, build it with
    /// [`ClipTextModel::new`] on a VarStore of one's own and call [`load_weights`].
    pub fn load(dir: &Path, device: Device) -> Result<ClipTextModel, NnError> {
        let config: ClipTextConfig = load::read_config(dir)?;
        config.validate().map_err(|e| NnError::Load { path: dir.join("config.json"), reason: e.to_string() })?;
        let mut vs = VarStore::new(device);
        let model = ClipTextModel::new(&vs.root(), &config)?;
        load_weights(&vs, dir, None)?;
        vs.freeze();
        Ok(model)
    }

    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// Encodes token ids (B, L), integers with L <= max_position_embeddings, padded as the CLIP
    /// tokenizer pads (SD pads with the end token). Ids on the CPU are checked against the
    /// vocabulary here; ids already on a GPU must have been checked where they were made
    /// ([`ClipTextConfig::check_token_ids`]), as the forward pass never reads them back.
    pub fn forward(&self, input_ids: &Tensor) -> Result<ClipTextOutput, NnError> {
        self.forward_t(input_ids, false)
    }

    /// [`ClipTextModel::forward`]; `train` turns the adapters' dropout on.
    pub fn forward_t(&self, input_ids: &Tensor, train: bool) -> Result<ClipTextOutput, NnError> {
        let (ids, batch, len) = self.checked_ids(input_ids)?;
        let device = self.device();
        let positions = Tensor::arange(len, (Kind::Int64, device));
        let mut h = ids.apply(&self.token_embedding) + positions.apply(&self.position_embedding);
        let mut hidden_states = Vec::with_capacity(self.layers.len() + 1);
        hidden_states.push(h.shallow_clone());
        for layer in &self.layers {
            h = layer.forward_t(&h, train);
            hidden_states.push(h.shallow_clone());
        }
        let last_hidden_state = h.apply(&self.final_layer_norm);
        let rows = Tensor::arange(batch, (Kind::Int64, device));
        let pooled = last_hidden_state.index(&[Some(rows), Some(self.eos_positions(&ids))]);
        let pooled = match &self.text_projection {
            Some(proj) => pooled.apply(proj),
            None => pooled,
        };
        Ok(ClipTextOutput { last_hidden_state, pooled, hidden_states })
    }

    /// The prompt embeddings with diffusers' `clip_skip` for SD 1.x/2.x: `final_layer_norm` of
    /// `hidden_states[-(clip_skip + 1)]`, so 0 gives `last_hidden_state`.
    pub fn clip_skip(&self, output: &ClipTextOutput, clip_skip: usize) -> Result<Tensor, NnError> {
        let n = output.hidden_states.len();
        let h = n.checked_sub(clip_skip).and_then(|m| m.checked_sub(1)).map(|i| &output.hidden_states[i]);
        let h = h.ok_or_else(|| NnError::Invalid(format!("clip_skip {clip_skip} is too large: the encoder has {} layers", n.saturating_sub(1))))?;
        Ok(h.apply(&self.final_layer_norm))
    }

    /// (B,) the position each prompt is pooled at, as transformers 4.57 finds it: with
    /// `eos_token_id` 2 (configs saved before transformers knew CLIP's end token, SD 1.x's
    /// among them) the largest id, the end token being the vocabulary's last; otherwise the
    /// first end token (position 0 when a row has none).
    pub fn eos_positions(&self, ids: &Tensor) -> Tensor {
        let ids = ids.to_kind(Kind::Int);
        if self.config.eos_token_id == 2 {
            ids.argmax(-1, false)
        } else {
            ids.eq(self.config.eos_token_id).to_kind(Kind::Int).argmax(-1, false)
        }
    }

    /// Where the weights are: read from them at every call rather than kept, so that the model
    /// follows its VarStore when that moves (models are built on the CPU and then moved).
    fn device(&self) -> Device {
        self.token_embedding.ws.device()
    }

    /// The ids as Int64 on the model's device with (batch, length), or why they cannot be
    /// encoded; checked here so that libtorch never sees an index it would fail on (the range on
    /// the host only: see [`ClipTextModel::forward`]).
    fn checked_ids(&self, input_ids: &Tensor) -> Result<(Tensor, i64, i64), NnError> {
        let invalid = |what: String| Err(NnError::Invalid(format!("CLIP text encoder input_ids: {what}")));
        let Ok((batch, len)) = input_ids.size2() else {
            return invalid(format!("expected a (batch, length) tensor, got shape {:?}", input_ids.size()));
        };
        if !matches!(input_ids.kind(), Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8) {
            return invalid(format!("expected integer token ids, got {:?}", input_ids.kind()));
        }
        let max_len = self.config.max_position_embeddings;
        if batch < 1 || !(1..=max_len).contains(&len) {
            return invalid(format!("shape {:?}: need at least one row and 1..={max_len} tokens", input_ids.size()));
        }
        if input_ids.device() == Device::Cpu {
            self.config.check_token_ids(input_ids)?;
        }
        Ok((input_ids.to_device(self.device()).to_kind(Kind::Int64), batch, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::LoraConfig;

    #[test]
    fn text_adapters_sit_on_the_attention_projections_and_start_as_the_base() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd/tiny-sd15/text_encoder");
        let config: ClipTextConfig = load::read_config(&dir).unwrap();
        let plain = ClipTextModel::load(&dir, Device::Cpu).unwrap();
        let vs = VarStore::new(Device::Cpu);
        let spec = LoraSpec { config: LoraConfig { rank: 2, dropout: 0.5, ..Default::default() }, scale: 1.0 };
        let adapted = ClipTextModel::with_lora(&vs.root(), &config, Some(&spec)).unwrap();
        let mut tensors = load::read_tensors(&load::weight_files(&dir, "model", None).unwrap()).unwrap();
        tensors.remove(POSITION_IDS);
        load::load_strict_except(&vs, &tensors, &dir, crate::lora::is_lora_variable).unwrap();
        let mut downs: Vec<String> = vs.variables().into_keys().filter(|n| n.ends_with(".lora_down.weight")).collect();
        downs.sort();
        assert_eq!(downs.len(), 3 * 4, "q, k, v, out of each of the 3 layers");
        assert_eq!(downs[0], "text_model.encoder.layers.0.self_attn.k_proj.lora_down.weight");
        let ids = Tensor::from_slice(&[998i64, 5, 17, 999, 999]).unsqueeze(0);
        let want = plain.forward(&ids).unwrap().last_hidden_state;
        let got = tch::no_grad(|| adapted.forward_t(&ids, true).unwrap().last_hidden_state);
        assert!(got.equal(&want), "up weights start at zero: the adapted encoder is its base, dropout or not");
    }
}
