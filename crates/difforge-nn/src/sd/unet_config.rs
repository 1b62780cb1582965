//! `UNet2DConditionModel`'s `config.json` as diffusers writes it for SD 1.x, SD 2.x and SDXL,
//! resolved into one value per level, with every option difforge does not implement refused by
//! name rather than silently ignored.

use crate::error::NnError;
use serde::Deserialize;

/// A config value diffusers accepts as one number for every level or as one per level.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PerLevel {
    One(i64),
    Each(Vec<i64>),
}

impl PerLevel {
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
