//! The `[model]` section: the shape of the UNet.

use crate::activation::Activation;
use difforge_core::ConfigError;

/// The largest network a config may describe: a bigger one would not fit in memory anywhere this
/// runs, and building it would abort instead of failing with a message.
const MAX_PARAMETERS: f64 = 2e9;
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
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=4096).contains(&self.channels) {
            return Err(ConfigError::new("model.channels", self.channels, "1..=4096"));
        }
        if self.channel_mult.is_empty() || self.channel_mult.len() > 8 || self.channel_mult.iter().any(|m| !(1..=16).contains(m)) {
            return Err(ConfigError::new("model.channel_mult", format!("{:?}", self.channel_mult), "1 to 8 levels, each multiplier in 1..=16"));
        }
        if !(1..=16).contains(&self.res_blocks) {
            return Err(ConfigError::new("model.res_blocks", self.res_blocks, "1..=16"));
        }
        if !(self.dropout.is_finite() && (0.0..1.0).contains(&self.dropout)) {
            return Err(ConfigError::new("model.dropout", self.dropout, "0.0 <= x < 1.0"));
        }
        if !(1..=64).contains(&self.heads) {
            return Err(ConfigError::new("model.heads", self.heads, "1..=64"));
        }
        if !(1..=1024).contains(&self.groups) {
            return Err(ConfigError::new("model.groups", self.groups, "1..=1024"));
        }
        if self.in_channels < 1 || self.out_channels < 1 || self.image_size < 1 {
            return Err(ConfigError::problem(
                "model.in_channels",
                "model.in_channels, model.out_channels and model.image_size must be resolved before building",
            ));
        }
        for (key, v) in [("model.in_channels", self.in_channels), ("model.out_channels", self.out_channels)] {
            if v > 64 {
                return Err(ConfigError::new(key, v, "1..=64"));
            }
        }
        if !(0..=100_000).contains(&self.num_classes) {
            return Err(ConfigError::new("model.num_classes", self.num_classes, "0 (unconditional) ..= 100000"));
        }
        let down = 1i64 << (self.channel_mult.len() - 1);
        if self.image_size % down != 0 {
            return Err(ConfigError::new(
                "model.image_size",
                self.image_size,
                format!("a multiple of {down} with {} levels (model.channel_mult)", self.channel_mult.len()),
            ));
        }
        for i in 0..self.channel_mult.len() {
            let ch = self.level_channels(i);
            if ch % self.groups != 0 {
                return Err(ConfigError::new("model.groups", self.groups, format!("a divisor of every level's channels (level {i} has {ch})")));
            }
        }
        let params = self.parameter_estimate();
        if params > MAX_PARAMETERS {
            return Err(ConfigError::new(
                "model.channels",
                self.channels,
                format!("a model of at most {MAX_PARAMETERS:.0e} parameters; these settings make about {params:.2e}"),
            ));
        }
        let last = self.channel_mult.len() - 1;
        for (i, side) in self.level_sides().into_iter().enumerate() {
            let attends = self.attention_resolutions.contains(&side) || (i == last && self.mid_attention);
            if attends && self.level_channels(i) % self.heads != 0 {
                return Err(ConfigError::new(
                    "model.heads",
                    self.heads,
                    format!("a divisor of the channels of every level with attention (level {i} has {})", self.level_channels(i)),
                ));
            }
        }
        Ok(())
    }

    /// About how many parameters the network has (its convolutions, linears and embeddings,
    /// counted block by block as `UNet::new` builds them), as f64 so that absurd settings do not
    /// overflow.
    pub fn parameter_estimate(&self) -> f64 {
        let (emb, levels) = (self.embed_dim() as f64, self.channel_mult.len());
        let conv = |cin: f64, cout: f64, k: f64| cin * cout * k * k + cout;
        let res = |cin: f64, cout: f64| {
            conv(cin, cout, 3.0)
                + conv(cout, cout, 3.0)
                + emb * cout * if self.scale_shift { 2.0 } else { 1.0 }
                + if cin != cout { conv(cin, cout, 1.0) } else { 0.0 }
        };
        let attn = |ch: f64| 4.0 * (ch * ch + ch);
        let sides = self.level_sides();
        let mut total =
            self.channels as f64 * emb + emb * emb + (self.num_classes as f64 + 1.0) * emb + conv(self.in_channels as f64, self.channels as f64, 3.0);
        let mut ch = self.channels as f64;
        let mut skips = vec![ch];
        for (i, side) in sides.iter().enumerate() {
            let out = self.level_channels(i) as f64;
            for _ in 0..self.res_blocks {
                total += res(ch, out) + if self.attention_resolutions.contains(side) { attn(out) } else { 0.0 };
                ch = out;
                skips.push(ch);
            }
            if i + 1 < levels {
                total += conv(ch, ch, 3.0);
                skips.push(ch);
            }
        }
        total += 2.0 * res(ch, ch) + if self.mid_attention { attn(ch) } else { 0.0 };
        for i in (0..levels).rev() {
            let out = self.level_channels(i) as f64;
            for _ in 0..=self.res_blocks {
                total += res(ch + skips.pop().unwrap_or(0.0), out) + if self.attention_resolutions.contains(&sides[i]) { attn(out) } else { 0.0 };
                ch = out;
            }
            if i > 0 {
                total += conv(ch, ch, 3.0);
            }
        }
        total + conv(ch, self.out_channels as f64, 3.0)
    }

    /// The image side at each level.
    pub fn level_sides(&self) -> Vec<i64> {
        (0..self.channel_mult.len()).map(|i| self.image_size >> i).collect()
    }

    /// The names [`UNetConfig::preset`] knows.
    pub const PRESETS: &'static [&'static str] = &["ref6m", "big64"];

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
