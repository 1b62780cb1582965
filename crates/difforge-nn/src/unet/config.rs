//! The `[model]` section: the shape of the UNet.

use crate::activation::Activation;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UNetConfig {
    /// Channels of the first level ("base channels").
    pub channels: i64,
    /// Channel multiplier of each level; one level per entry, each but the last halves the size.
    pub channel_mult: Vec<i64>,
    /// Residual blocks per level on the way down (the way up has one more, for the skip of the
    /// downsampler).
    pub res_blocks: usize,
    /// Image sides (in pixels) at which self-attention follows each residual block, e.g. [8].
    pub attention_resolutions: Vec<i64>,
    /// Self-attention in the middle block (between the two lowest-resolution residual blocks).
    pub mid_attention: bool,
    /// The embedding modulates each residual block as scale and shift (ADM); false adds it.
    pub scale_shift: bool,
    /// Attention heads (each level's channels must divide by it).
    pub heads: i64,
    /// Dropout inside residual blocks, in [0, 1).
    pub dropout: f64,
    pub activation: Activation,
    /// GroupNorm groups (every level's channels must divide by it).
    pub groups: i64,
    /// Input channels; 0 means "as the data" (data.channels).
    pub in_channels: i64,
    /// Output channels; 0 means "as the input".
    pub out_channels: i64,
    /// Image side; 0 means "as the data" (data.image_size).
    pub image_size: i64,
    /// Number of classes for conditioning; 0 trains an unconditional model. One more embedding
    /// row, the null class, is learnt for classifier-free guidance.
    pub num_classes: i64,
}

impl Default for UNetConfig {
    fn default() -> Self {
        UNetConfig {
            channels: 64,
            channel_mult: vec![1, 2, 2],
            res_blocks: 2,
            attention_resolutions: vec![8],
            mid_attention: true,
            scale_shift: true,
            heads: 4,
            dropout: 0.0,
            activation: Activation::Silu,
            groups: 32,
            in_channels: 0,
            out_channels: 0,
            image_size: 0,
            num_classes: 0,
        }
    }
}

impl UNetConfig {
    /// Channels of level `i`.
    pub fn level_channels(&self, i: usize) -> i64 {
        self.channels * self.channel_mult[i]
    }

    /// Width of the time/class embedding.
    pub fn embed_dim(&self) -> i64 {
        self.channels * 4
    }

    /// The null class index (used for unconditional predictions in guidance).
    pub fn null_class(&self) -> i64 {
        self.num_classes
    }

    /// Range and consistency checks, naming the key; run on the effective config.
    pub fn validate(&self) -> Result<(), String> {
        if self.channels < 1 {
            return Err(format!("model.channels = {}: expected a positive number", self.channels));
        }
        if self.channel_mult.is_empty() || self.channel_mult.iter().any(|&m| m < 1) {
            return Err(format!("model.channel_mult = {:?}: expected one or more positive multipliers", self.channel_mult));
        }
        if self.res_blocks == 0 {
            return Err("model.res_blocks = 0: expected at least 1".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("model.dropout = {}: expected 0.0 <= x < 1.0", self.dropout));
        }
        if self.heads < 1 || self.groups < 1 {
            return Err(format!("model.heads = {} and model.groups = {}: expected positive numbers", self.heads, self.groups));
        }
        if self.in_channels < 1 || self.out_channels < 1 || self.image_size < 1 {
            return Err("model.in_channels, model.out_channels and model.image_size must be resolved before building".into());
        }
        if self.num_classes < 0 {
            return Err(format!("model.num_classes = {}: expected 0 (unconditional) or more", self.num_classes));
        }
        let down = 1i64 << (self.channel_mult.len() - 1);
        if self.image_size % down != 0 {
            return Err(format!(
                "model.image_size = {}: with {} levels (model.channel_mult) it must divide by {down}",
                self.image_size,
                self.channel_mult.len()
            ));
        }
        for i in 0..self.channel_mult.len() {
            let ch = self.level_channels(i);
            if ch % self.groups != 0 {
                return Err(format!("model.groups = {}: level {i} has {ch} channels, not divisible", self.groups));
            }
        }
        let last = self.channel_mult.len() - 1;
        for (i, side) in self.level_sides().into_iter().enumerate() {
            let attends = self.attention_resolutions.contains(&side) || (i == last && self.mid_attention);
            if attends && self.level_channels(i) % self.heads != 0 {
                return Err(format!("model.heads = {}: level {i} has {} channels, not divisible", self.heads, self.level_channels(i)));
            }
        }
        Ok(())
    }

    /// The image side at each level.
    pub fn level_sides(&self) -> Vec<i64> {
        (0..self.channel_mult.len()).map(|i| self.image_size >> i).collect()
    }

    /// Named presets for the sizes the README and benchmarks talk about.
    pub fn preset(name: &str) -> Option<UNetConfig> {
        let base = UNetConfig::default();
        match name {
            // The 6.1 M-parameter reference UNet of the speed comparison
            // (../shared/reference/unet_bench.py): one-head attention in the 8x8 middle block only.
            "ref6m" => Some(UNetConfig {
                channels: 64,
                channel_mult: vec![1, 2, 2],
                attention_resolutions: vec![],
                heads: 1,
                scale_shift: false,
                in_channels: 3,
                image_size: 32,
                ..base
            }),
            // The 35 M+ parameter UNet at 64x64.
            "big64" => {
                Some(UNetConfig { channels: 128, channel_mult: vec![1, 2, 2, 2], attention_resolutions: vec![16, 8], in_channels: 3, image_size: 64, ..base })
            }
            _ => None,
        }
    }
}
