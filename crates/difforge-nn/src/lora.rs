//! LoRA (low-rank adaptation, Hu et al. 2021): a frozen layer W plus a trainable low-rank update
//! B A, scaled by alpha / rank. B starts at zero, so an adapted network starts as its base.
//! Variables sit beside the layer they adapt (`to_q.lora_down.weight`, `to_q.lora_up.weight`,
//! as kohya's sd-scripts name them), so adapters can be saved, loaded and merged by name.

use difforge_core::{Choice, ConfigError};
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Tensor};

difforge_core::choice! {
    /// Which layers get adapters.
    pub enum LoraTarget {
        /// The q, k, v and out projections of every self-attention layer.
        Attention = "attention",
        /// The two 3x3 convolutions of every residual block (LoCon).
        Conv = "conv",
        /// The time-embedding MLP.
        Embedding = "embedding",
        /// `proj_in` and `proj_out` of every transformer (Stable Diffusion).
        Projection = "projection",
        /// The feed-forward layers of every transformer (Stable Diffusion: `ff.net.0.proj`, `ff.net.2`).
        FeedForward = "feed_forward",
    }
}

/// The `[lora]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    pub rank: i64,
    /// The update is scaled by alpha / rank.
    pub alpha: f64,
    /// Dropout on the adapter's input during training.
    pub dropout: f64,
    pub targets: Vec<LoraTarget>,
    /// Also train the class-embedding table (needed when a fine-tune adds classes; the adapter
    /// file then carries the table).
    pub train_class_embedding: bool,
    /// Also adapt the text encoder(s): q, k, v and out projections of every CLIP layer (Stable
    /// Diffusion), trained with the UNet's adapters while the encoder's own weights stay frozen.
    pub text_encoder: bool,
    /// Stable Diffusion: the name of the kohya-layout file a run writes (`RUN/<name>.safetensors`,
    /// kohya's `--output_name`), which is what the webui's `<lora:name:weight>` tag says.
    #[serde(skip_serializing_if = "is_default_name")]
    pub output_name: String,
}

/// The kohya file's name when `lora.output_name` is not set.
pub const DEFAULT_OUTPUT_NAME: &str = "lora";

fn is_default_name(name: &str) -> bool {
    name == DEFAULT_OUTPUT_NAME
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            rank: 8,
            alpha: 8.0,
            dropout: 0.0,
            targets: vec![LoraTarget::Attention],
            train_class_embedding: false,
            text_encoder: false,
            output_name: DEFAULT_OUTPUT_NAME.to_string(),
        }
    }
}

/// The class-embedding table's variable name.
pub const CLASS_EMBEDDING: &str = "class_embedding.weight";

impl LoraConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=1024).contains(&self.rank) {
            return Err(ConfigError::new("lora.rank", self.rank, "1..=1024"));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(ConfigError::new("lora.alpha", self.alpha, "a positive number"));
        }
        if !(self.dropout.is_finite() && (0.0..1.0).contains(&self.dropout)) {
            return Err(ConfigError::new("lora.dropout", self.dropout, "0.0 <= x < 1.0"));
        }
        if self.targets.is_empty() {
            return Err(ConfigError::new("lora.targets", "[]", format!("some of {}", LoraTarget::expected())));
        }
        // A file name: no folders, nothing hidden, not diffusers' own file's name.
        let plain = |c: char| c.is_alphanumeric() || "-_.+() ".contains(c);
        if self.output_name.is_empty()
            || self.output_name.starts_with('.')
            || !self.output_name.chars().all(plain)
            || self.output_name == "pytorch_lora_weights"
        {
            let expected = "a file name without its extension: letters, digits, - _ . + ( ) and spaces, not starting with a dot (and not pytorch_lora_weights, diffusers' file)";
            return Err(ConfigError::new("lora.output_name", format!("{:?}", self.output_name), expected));
        }
        Ok(())
    }
}

/// Adapters to build: the config and a user scale (1.0 in training; `--lora-scale` in sampling).
#[derive(Debug, Clone)]
pub struct LoraSpec {
    pub config: LoraConfig,
    pub scale: f64,
}

impl LoraSpec {
    pub fn wants(&self, target: LoraTarget) -> bool {
        self.config.targets.contains(&target)
    }

    /// This spec if it adapts `target`: what a layer of that kind passes to its constructor.
    pub fn targeting(lora: Option<&LoraSpec>, target: LoraTarget) -> Option<&LoraSpec> {
        lora.filter(|l| l.wants(target))
    }

    fn factor(&self) -> f64 {
        self.scale * self.config.alpha / self.config.rank as f64
    }
}

/// True for the variables that belong to adapters.
pub fn is_lora_variable(name: &str) -> bool {
    name.contains(".lora_down.") || name.contains(".lora_up.")
}

/// A linear layer with an optional adapter.
#[derive(Debug)]
pub struct Linear {
    base: nn::Linear,
    lora: Option<(nn::Linear, nn::Linear, f64, f64)>,
}

impl Linear {
    pub fn new(p: nn::Path, cin: i64, cout: i64, cfg: nn::LinearConfig, lora: Option<&LoraSpec>) -> Linear {
        let adapter = lora.map(|spec| {
            let r = spec.config.rank;
            let no_bias = nn::LinearConfig { bias: false, ..Default::default() };
            let zero = nn::LinearConfig { bias: false, ws_init: nn::Init::Const(0.0), ..Default::default() };
            (nn::linear(&p / "lora_down", cin, r, no_bias), nn::linear(&p / "lora_up", r, cout, zero), spec.factor(), spec.config.dropout)
        });
        Linear { base: nn::linear(p, cin, cout, cfg), lora: adapter }
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let y = self.base.forward(x);
        match &self.lora {
            Some((down, up, factor, dropout)) => y + x.dropout(*dropout, train).apply(down).apply(up) * *factor,
            None => y,
        }
    }
}

/// A 2-d convolution with an optional adapter: a k x k conv down to `rank` channels, then a
/// 1 x 1 conv up (the conv LoRA of sd-scripts).
#[derive(Debug)]
pub struct Conv {
    base: nn::Conv2D,
    lora: Option<(nn::Conv2D, nn::Conv2D, f64, f64)>,
}

impl Conv {
    pub fn new(p: nn::Path, cin: i64, cout: i64, k: i64, cfg: nn::ConvConfig, lora: Option<&LoraSpec>) -> Conv {
        let adapter = lora.map(|spec| {
            let r = spec.config.rank;
            let down_cfg = nn::ConvConfig { bias: false, ..cfg };
            let up_cfg = nn::ConvConfig { bias: false, ws_init: nn::Init::Const(0.0), ..Default::default() };
            (nn::conv2d(&p / "lora_down", cin, r, k, down_cfg), nn::conv2d(&p / "lora_up", r, cout, 1, up_cfg), spec.factor(), spec.config.dropout)
        });
        Conv { base: nn::conv2d(p, cin, cout, k, cfg), lora: adapter }
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let y = self.base.forward(x);
        match &self.lora {
            Some((down, up, factor, dropout)) => y + x.dropout(*dropout, train).apply(down).apply(up) * *factor,
            None => y,
        }
    }
}

/// The weight change an adapter makes, shaped like the base weight: factor * up @ down.
pub fn merged_delta(down: &Tensor, up: &Tensor, factor: f64) -> Tensor {
    let up2 = up.flatten(1, -1); // (out, r)
    let down_shape = down.size(); // (r, in) or (r, in, k, k)
    let down2 = down.flatten(1, -1); // (r, in * k * k)
    let delta = up2.matmul(&down2) * factor;
    let mut shape = vec![up.size()[0]];
    shape.extend_from_slice(&down_shape[1..]);
    delta.view(shape.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_name_is_a_plain_file_name() {
        let named = |name: &str| LoraConfig { output_name: name.into(), ..LoraConfig::default() }.validate();
        assert!(named("my-style_v2 (final)").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "pytorch_lora_weights"] {
            assert_eq!(named(bad).unwrap_err().key, "lora.output_name", "{bad:?}");
        }
    }
    use tch::{Device, Kind};

    #[test]
    fn a_new_adapter_changes_nothing_and_merging_equals_the_adapted_layer() {
        let vs = nn::VarStore::new(Device::Cpu);
        let spec = LoraSpec { config: LoraConfig { rank: 2, alpha: 4.0, ..Default::default() }, scale: 0.5 };
        let lin = Linear::new(vs.root() / "l", 6, 5, Default::default(), Some(&spec));
        let conv = Conv::new(vs.root() / "c", 3, 4, 3, nn::ConvConfig { padding: 1, ..Default::default() }, Some(&spec));
        let x = Tensor::randn([7, 6], (Kind::Float, Device::Cpu));
        let img = Tensor::randn([2, 3, 5, 5], (Kind::Float, Device::Cpu));
        assert!(lin.forward(&x, false).equal(&lin.base.forward(&x)));
        // Give the adapters weights, then check W + delta reproduces the adapted outputs.
        tch::no_grad(|| {
            for (_, mut v) in vs.variables() {
                let _ = v.g_add_(&(v.randn_like() * 0.3));
            }
        });
        let (down, up, f, _) = lin.lora.as_ref().unwrap();
        let merged = &lin.base.ws + merged_delta(&down.ws, &up.ws, *f);
        let want = x.matmul(&merged.tr()) + lin.base.bs.as_ref().unwrap();
        assert!((lin.forward(&x, false) - want).abs().max().double_value(&[]) < 1e-5);
        let (down, up, f, _) = conv.lora.as_ref().unwrap();
        let merged = &conv.base.ws + merged_delta(&down.ws, &up.ws, *f);
        let want = img.conv2d(&merged, conv.base.bs.as_ref(), [1, 1], [1, 1], [1, 1], 1);
        assert!((conv.forward(&img, false) - want).abs().max().double_value(&[]) < 1e-5);
        assert!(is_lora_variable("down.0.attn.0.to_q.lora_up.weight"));
        assert!(!is_lora_variable("down.0.attn.0.to_q.weight"));
    }

    #[test]
    fn the_stable_diffusion_targets_and_the_text_encoder_switch_parse_and_select_layers() {
        let text = r#"{"targets": ["attention", "projection", "feed_forward", "conv"], "text_encoder": true}"#;
        let config: LoraConfig = serde_json::from_str(text).unwrap();
        assert!(config.text_encoder && config.validate().is_ok());
        assert!(!LoraConfig::default().text_encoder, "the text encoder is adapted only when asked");
        let spec = LoraSpec { config: LoraConfig { targets: vec![LoraTarget::FeedForward], ..config }, scale: 1.0 };
        assert!(LoraSpec::targeting(Some(&spec), LoraTarget::FeedForward).is_some());
        assert!(LoraSpec::targeting(Some(&spec), LoraTarget::Projection).is_none());
        assert!(LoraSpec::targeting(None, LoraTarget::FeedForward).is_none());
        let err = serde_json::from_str::<LoraConfig>(r#"{"targets": ["ff"]}"#).unwrap_err().to_string();
        assert!(err.contains("feed_forward"), "the error lists the values: {err}");
    }

    #[test]
    fn adapter_dropout_acts_in_training_only() {
        let vs = nn::VarStore::new(Device::Cpu);
        let spec = LoraSpec { config: LoraConfig { rank: 2, dropout: 0.5, ..Default::default() }, scale: 1.0 };
        let lin = Linear::new(vs.root() / "l", 6, 5, Default::default(), Some(&spec));
        tch::no_grad(|| {
            for (_, mut v) in vs.variables() {
                let _ = v.g_add_(&(v.randn_like() * 0.3));
            }
        });
        let x = Tensor::randn([64, 6], (Kind::Float, Device::Cpu));
        assert!(lin.forward(&x, false).equal(&lin.forward(&x, false)), "no dropout outside training");
        assert!(!lin.forward(&x, true).equal(&lin.forward(&x, false)), "dropout on the adapter's input in training");
        // The base path never drops: with the adapter's up weight zero, training changes nothing.
        let (_, up, _, _) = lin.lora.as_ref().unwrap();
        tch::no_grad(|| {
            let _ = up.ws.shallow_clone().zero_();
        });
        assert!(lin.forward(&x, true).equal(&lin.base.forward(&x)));
    }
}
