//! `UNet2DConditionModel`'s `config.json` as diffusers writes it for SD 1.x, SD 2.x and SDXL,
//! resolved into one value per level, with every option difforge does not implement refused by
//! name rather than silently ignored.

use super::config_bounds::{each_within, fits_in_memory, positive_eps, within, ComponentConfig};
use crate::error::NnError;
use difforge_core::ConfigError;
use serde::Deserialize;

/// A config value diffusers accepts as one number for every level or as one per level.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PerLevel {
    One(i64),
    Each(Vec<i64>),
}

impl PerLevel {
    /// The values given, one or one per level.
    fn values(&self) -> Vec<i64> {
        match self {
            PerLevel::One(v) => vec![*v],
            PerLevel::Each(v) => v.clone(),
        }
    }

    fn resolve(&self, field: &str, levels: usize) -> Result<Vec<i64>, NnError> {
        match self {
            PerLevel::One(v) => Ok(vec![*v; levels]),
            PerLevel::Each(v) if v.len() == levels => Ok(v.clone()),
            PerLevel::Each(v) => Err(NnError::Invalid(format!("`{field}` has {} values, block_out_channels has {levels}", v.len()))),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_one() -> PerLevel {
    PerLevel::One(1)
}

#[derive(Debug, Clone, Deserialize)]
pub struct UNet2DConditionConfig {
    pub in_channels: i64,
    pub out_channels: i64,
    pub block_out_channels: Vec<i64>,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub layers_per_block: PerLevel,
    #[serde(default = "default_one")]
    pub transformer_layers_per_block: PerLevel,
    /// diffusers reads this as the number of heads (a historical naming mistake it keeps for
    /// compatibility) unless `num_attention_heads` is given.
    pub attention_head_dim: PerLevel,
    #[serde(default)]
    pub num_attention_heads: Option<PerLevel>,
    pub cross_attention_dim: PerLevel,
    pub norm_num_groups: i64,
    pub norm_eps: f64,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default = "default_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "default_downsample_padding")]
    pub downsample_padding: i64,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub addition_time_embed_dim: Option<i64>,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<i64>,
    #[serde(default)]
    pub sample_size: Option<i64>,
    #[serde(flatten)]
    pub unsupported: Unsupported,
}

fn default_downsample_padding() -> i64 {
    1
}

/// Options that change the network in ways difforge does not build; each must keep the value
/// Stable Diffusion uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Unsupported {
    #[serde(default)]
    act_fn: Option<String>,
    #[serde(default)]
    class_embed_type: Option<String>,
    #[serde(default)]
    num_class_embeds: Option<i64>,
    #[serde(default)]
    encoder_hid_dim_type: Option<String>,
    #[serde(default)]
    time_cond_proj_dim: Option<i64>,
    #[serde(default)]
    mid_block_type: Option<String>,
    #[serde(default)]
    resnet_time_scale_shift: Option<String>,
    #[serde(default)]
    time_embedding_type: Option<String>,
    #[serde(default)]
    only_cross_attention: Option<serde_json::Value>,
    #[serde(default)]
    dual_cross_attention: Option<bool>,
    #[serde(default)]
    center_input_sample: Option<bool>,
    #[serde(default)]
    conv_in_kernel: Option<i64>,
    #[serde(default)]
    conv_out_kernel: Option<i64>,
    #[serde(default)]
    mid_block_scale_factor: Option<f64>,
    #[serde(default)]
    reverse_transformer_layers_per_block: Option<serde_json::Value>,
}

fn refuse(field: &str, value: &dyn std::fmt::Debug, expected: &str) -> NnError {
    NnError::Invalid(format!("UNet config `{field}` = {value:?} is not supported (expected {expected})"))
}

impl Unsupported {
    fn check(&self) -> Result<(), NnError> {
        let is = |v: &Option<String>, want: &str| v.as_deref().is_none_or(|s| s == want);
        if !is(&self.act_fn, "silu") {
            return Err(refuse("act_fn", &self.act_fn, "\"silu\""));
        }
        if !is(&self.mid_block_type, "UNetMidBlock2DCrossAttn") {
            return Err(refuse("mid_block_type", &self.mid_block_type, "\"UNetMidBlock2DCrossAttn\""));
        }
        if !is(&self.resnet_time_scale_shift, "default") {
            return Err(refuse("resnet_time_scale_shift", &self.resnet_time_scale_shift, "\"default\""));
        }
        if !is(&self.time_embedding_type, "positional") {
            return Err(refuse("time_embedding_type", &self.time_embedding_type, "\"positional\""));
        }
        for (field, value) in [("class_embed_type", &self.class_embed_type), ("encoder_hid_dim_type", &self.encoder_hid_dim_type)] {
            if value.is_some() {
                return Err(refuse(field, value, "null"));
            }
        }
        if self.num_class_embeds.is_some() || self.time_cond_proj_dim.is_some() {
            return Err(refuse("num_class_embeds/time_cond_proj_dim", &(self.num_class_embeds, self.time_cond_proj_dim), "null"));
        }
        if self.only_cross_attention.as_ref().is_some_and(|v| v != &serde_json::Value::Bool(false)) {
            return Err(refuse("only_cross_attention", &self.only_cross_attention, "false"));
        }
        if self.dual_cross_attention == Some(true) || self.center_input_sample == Some(true) {
            return Err(refuse("dual_cross_attention/center_input_sample", &(self.dual_cross_attention, self.center_input_sample), "false"));
        }
        if self.conv_in_kernel.is_some_and(|k| k != 3) || self.conv_out_kernel.is_some_and(|k| k != 3) {
            return Err(refuse("conv_in_kernel/conv_out_kernel", &(self.conv_in_kernel, self.conv_out_kernel), "3"));
        }
        if self.mid_block_scale_factor.is_some_and(|f| f != 1.0) {
            return Err(refuse("mid_block_scale_factor", &self.mid_block_scale_factor, "1"));
        }
        if self.reverse_transformer_layers_per_block.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(refuse("reverse_transformer_layers_per_block", &self.reverse_transformer_layers_per_block, "null"));
        }
        Ok(())
    }
}

/// One resolution level of the UNet, read from the config.
#[derive(Debug, Clone, Copy)]
pub struct Level {
    pub channels: i64,
    /// Whether its blocks have transformers (CrossAttnDownBlock2D / CrossAttnUpBlock2D).
    pub down_attention: bool,
    pub layers: i64,
    pub transformer_layers: i64,
    pub heads: i64,
    pub context_dim: i64,
}

/// SDXL's extra conditioning: the pooled text embedding and the size/crop ids.
#[derive(Debug, Clone, Copy)]
pub struct TextTimeShape {
    pub time_embed_dim: i64,
    pub input_dim: i64,
}

impl UNet2DConditionConfig {
    /// The levels from the highest resolution down, after checking the config.
    pub fn levels(&self) -> Result<Vec<Level>, NnError> {
        self.check_sizes()?;
        self.unsupported.check()?;
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(NnError::Invalid(format!(
                "UNet config: block_out_channels, down_block_types and up_block_types must have the same, non-zero length (got {n}, {}, {})",
                self.down_block_types.len(),
                self.up_block_types.len()
            )));
        }
        let heads = self.num_attention_heads.as_ref().unwrap_or(&self.attention_head_dim);
        let heads = heads.resolve("attention_head_dim", n)?;
        let layers = self.layers_per_block.resolve("layers_per_block", n)?;
        let transformer_layers = self.transformer_layers_per_block.resolve("transformer_layers_per_block", n)?;
        let context = self.cross_attention_dim.resolve("cross_attention_dim", n)?;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let down_attention = block_has_attention(&self.down_block_types[i], "Down")?;
            let up_attention = block_has_attention(&self.up_block_types[n - 1 - i], "Up")?;
            if down_attention != up_attention {
                return Err(NnError::Invalid(format!(
                    "UNet config: level {i} has attention on one side only ({} / {})",
                    self.down_block_types[i],
                    self.up_block_types[n - 1 - i]
                )));
            }
            let channels = self.block_out_channels[i];
            if channels % self.norm_num_groups != 0 || heads[i] <= 0 || channels % heads[i] != 0 {
                return Err(NnError::Invalid(format!(
                    "UNet config: level {i} has {channels} channels, not divisible by norm_num_groups {} and heads {}",
                    self.norm_num_groups, heads[i]
                )));
            }
            let level =
                Level { channels, down_attention, layers: layers[i], transformer_layers: transformer_layers[i], heads: heads[i], context_dim: context[i] };
            out.push(level);
        }
        Ok(out)
    }

    /// The SDXL `text_time` embedding's shape; None without `addition_embed_type`.
    pub fn text_time(&self) -> Result<Option<TextTimeShape>, NnError> {
        match self.addition_embed_type.as_deref() {
            None => Ok(None),
            Some("text_time") => match (self.addition_time_embed_dim, self.projection_class_embeddings_input_dim) {
                (Some(time_embed_dim), Some(input_dim)) => Ok(Some(TextTimeShape { time_embed_dim, input_dim })),
                _ => Err(NnError::Invalid(
                    "UNet config: addition_embed_type \"text_time\" needs addition_time_embed_dim and projection_class_embeddings_input_dim".into(),
                )),
            },
            Some(other) => Err(refuse("addition_embed_type", &other, "null or \"text_time\"")),
        }
    }
}

fn block_has_attention(kind: &str, side: &str) -> Result<bool, NnError> {
    match (kind, side) {
        ("CrossAttnDownBlock2D", "Down") | ("CrossAttnUpBlock2D", "Up") => Ok(true),
        ("DownBlock2D", "Down") | ("UpBlock2D", "Up") => Ok(false),
        _ => Err(refuse(&format!("{}_block_types", side.to_lowercase()), &kind, &format!("CrossAttn{side}Block2D or {side}Block2D"))),
    }
}

/// Far above any published UNet (SDXL: 3 levels of up to 1,280 channels).
const MAX_LEVELS: i64 = 8;
const MAX_CHANNELS: i64 = 8192;

impl ComponentConfig for UNet2DConditionConfig {
    fn check_sizes(&self) -> Result<(), ConfigError> {
        within("block_out_channels (its length)", self.block_out_channels.len() as i64, 1, MAX_LEVELS)?;
        each_within("block_out_channels", &self.block_out_channels, 1, MAX_CHANNELS)?;
        within("in_channels", self.in_channels, 1, 64)?;
        within("out_channels", self.out_channels, 1, 64)?;
        within("norm_num_groups", self.norm_num_groups, 1, MAX_CHANNELS)?;
        positive_eps("norm_eps", self.norm_eps)?;
        within("downsample_padding", self.downsample_padding, 0, 8)?;
        let per_level = [
            ("layers_per_block", Some(&self.layers_per_block), 1, 32),
            ("transformer_layers_per_block", Some(&self.transformer_layers_per_block), 0, 64),
            ("attention_head_dim", Some(&self.attention_head_dim), 1, 1024),
            ("num_attention_heads", self.num_attention_heads.as_ref(), 1, 1024),
            ("cross_attention_dim", Some(&self.cross_attention_dim), 1, 16384),
        ];
        for (field, values, lo, hi) in per_level {
            if let Some(values) = values {
                each_within(field, &values.values(), lo, hi)?;
            }
        }
        for (field, value, hi) in [
            ("sample_size", self.sample_size, 4096),
            ("addition_time_embed_dim", self.addition_time_embed_dim, 8192),
            ("projection_class_embeddings_input_dim", self.projection_class_embeddings_input_dim, 65536),
        ] {
            if let Some(v) = value {
                within(field, v, 1, hi)?;
            }
        }
        fits_in_memory(self.parameters_lower_bound())
    }
}

impl UNet2DConditionConfig {
    /// Fewer weights than the network has: only its resnets' two 3x3 convolutions (per level,
    /// `layers` resnets down and `layers + 1` up), enough to refuse a config no machine can hold.
    fn parameters_lower_bound(&self) -> f64 {
        let n = self.block_out_channels.len();
        let layers = self.layers_per_block.resolve("layers_per_block", n).unwrap_or_else(|_| vec![1; n]);
        self.block_out_channels.iter().zip(layers).map(|(&c, l)| (c as f64).powi(2) * 18.0 * (2.0 * l as f64 + 1.0)).sum()
    }
}
