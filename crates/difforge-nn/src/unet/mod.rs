//! The class-conditional UNet (DDPM/ADM layout): conv_in; per level `res_blocks` residual
//! blocks (with self-attention at the configured resolutions) and a downsampler; a middle block;
//! the mirror path up with skip connections; norm, activation, conv_out (zero-initialised, so
//! the untrained model predicts zero).

mod attention;
mod config;
mod embedding;
mod flops;
mod resample;
mod resnet;

pub use attention::SelfAttention;
pub use config::UNetConfig;
pub use embedding::timestep_features;
pub use flops::unet_forward_flops;

use crate::conditioning::Conditioning;
use crate::denoiser::{AttentionMaps, DenoiserNet};
use crate::error::NnError;
use crate::lora::LoraSpec;
use embedding::TimeClassEmbedding;
use resample::{Downsample, Upsample};
use resnet::{conv3x3, BlockOptions, ResBlock};
use tch::{nn, Tensor};

/// One residual block and the attention that may follow it.
#[derive(Debug)]
struct Stage {
    res: ResBlock,
    attn: Option<SelfAttention>,
}

/// Receives (layer name, attention weights) for each attention layer during a forward pass.
type AttentionCapture<'a> = Option<&'a mut Vec<(String, Tensor)>>;

fn attend(a: &SelfAttention, name: &str, h: &Tensor, train: bool, capture: &mut AttentionCapture) -> Tensor {
    if let Some(c) = capture.as_mut() {
        c.push((name.to_string(), a.weights(h)));
    }
    a.forward(h, train)
}

impl Stage {
    fn forward(&self, name: &str, x: &Tensor, emb: &Tensor, train: bool, capture: &mut AttentionCapture) -> Tensor {
        let h = self.res.forward(x, emb, train);
        match &self.attn {
            Some(a) => attend(a, name, &h, train, capture),
            None => h,
        }
    }
}

#[derive(Debug)]
struct Level {
    stages: Vec<Stage>,
    resample_down: Option<Downsample>,
    resample_up: Option<Upsample>,
}

#[derive(Debug)]
pub struct UNet {
    config: UNetConfig,
    cond: TimeClassEmbedding,
    conv_in: nn::Conv2D,
    down: Vec<Level>,
    mid_res1: ResBlock,
    mid_attn: Option<SelfAttention>,
    mid_res2: ResBlock,
    up: Vec<Level>,
    norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl UNet {
    /// Builds the network under `p`; the config must be resolved (channels and size known).
    pub fn new(p: &nn::Path, config: &UNetConfig) -> Result<UNet, NnError> {
        UNet::with_lora(p, config, None)
    }

    /// Builds the network with LoRA adapters on the targeted layers.
    pub fn with_lora(p: &nn::Path, config: &UNetConfig, lora: Option<&LoraSpec>) -> Result<UNet, NnError> {
        config.validate()?;
        let c = config;
        let emb = c.embed_dim();
        let opts = BlockOptions { groups: c.groups, activation: c.activation, dropout: c.dropout, scale_shift: c.scale_shift };
        let attn = |p: nn::Path, ch: i64| SelfAttention::new(&p, ch, c.heads, c.groups, lora);
        let levels = c.channel_mult.len();
        let sides = c.level_sides();

        let conv_in = conv3x3(p / "conv_in", c.in_channels, c.channels, false);
        let mut skips = vec![c.channels];
        let mut ch = c.channels;
        let mut down = Vec::with_capacity(levels);
        for (i, &side) in sides.iter().enumerate() {
            let lp = p / "down" / i;
            let out = c.level_channels(i);
            let mut stages = Vec::new();
            for j in 0..c.res_blocks {
                let res = ResBlock::new(&(&lp / "res" / j), ch, out, emb, &opts, lora);
                let attn = c.attention_resolutions.contains(&side).then(|| attn(&lp / "attn" / j, out));
                stages.push(Stage { res, attn });
                ch = out;
                skips.push(ch);
            }
            let resample_down = (i + 1 < levels).then(|| Downsample::new(&lp / "downsample", ch));
            if resample_down.is_some() {
                skips.push(ch);
            }
            down.push(Level { stages, resample_down, resample_up: None });
        }

        let mid_res1 = ResBlock::new(&(p / "mid" / "res1"), ch, ch, emb, &opts, lora);
        let mid_attn = c.mid_attention.then(|| attn(p / "mid" / "attn", ch));
        let mid_res2 = ResBlock::new(&(p / "mid" / "res2"), ch, ch, emb, &opts, lora);

        let mut up = Vec::with_capacity(levels);
        for i in (0..levels).rev() {
            let lp = p / "up" / i;
            let out = c.level_channels(i);
            let mut stages = Vec::new();
            for j in 0..=c.res_blocks {
                let skip = skips.pop().expect("one skip per down stage");
                let res = ResBlock::new(&(&lp / "res" / j), ch + skip, out, emb, &opts, lora);
                let attn = c.attention_resolutions.contains(&sides[i]).then(|| attn(&lp / "attn" / j, out));
                stages.push(Stage { res, attn });
                ch = out;
            }
            let resample_up = (i > 0).then(|| Upsample::new(&lp / "upsample", ch));
            up.push(Level { stages, resample_down: None, resample_up });
        }

        Ok(UNet {
            config: c.clone(),
            cond: TimeClassEmbedding::new(p, c.channels, emb, c.num_classes, c.activation, lora),
            conv_in,
            down,
            mid_res1,
            mid_attn,
            mid_res2,
            up,
            norm_out: nn::group_norm(p / "norm_out", c.groups, ch, Default::default()),
            conv_out: conv3x3(p / "conv_out", ch, c.out_channels, true),
        })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// The prediction for noisy images `x` (B, C, S, S) at timesteps `t` (B,), conditioned on
    /// class indices `class` (B,) where `num_classes` means "no class".
    fn forward_impl(&self, x: &Tensor, t: &Tensor, class: Option<&Tensor>, train: bool, mut capture: AttentionCapture) -> Tensor {
        let emb = self.cond.forward(t, class);
        let mut h = x.apply(&self.conv_in);
        let mut skips = vec![h.shallow_clone()];
        for (i, level) in self.down.iter().enumerate() {
            for (j, stage) in level.stages.iter().enumerate() {
                h = stage.forward(&format!("down.{i}.attn.{j}"), &h, &emb, train, &mut capture);
                skips.push(h.shallow_clone());
            }
            if let Some(ds) = &level.resample_down {
                h = ds.forward(&h);
                skips.push(h.shallow_clone());
            }
        }
        h = self.mid_res1.forward(&h, &emb, train);
        if let Some(a) = &self.mid_attn {
            h = attend(a, "mid.attn", &h, train, &mut capture);
        }
        h = self.mid_res2.forward(&h, &emb, train);
        let levels = self.up.len();
        for (k, level) in self.up.iter().enumerate() {
            for (j, stage) in level.stages.iter().enumerate() {
                let skip = skips.pop().expect("one skip per up stage");
                h = stage.forward(&format!("up.{}.attn.{j}", levels - 1 - k), &Tensor::cat(&[&h, &skip], 1), &emb, train, &mut capture);
            }
            if let Some(us) = &level.resample_up {
                h = us.forward(&h);
            }
        }
        self.config.activation.apply(&h.apply(&self.norm_out)).apply(&self.conv_out)
    }
}

impl DenoiserNet for UNet {
    /// Class conditioning is read from `Conditioning::Class`; any other kind means no class.
    fn forward(&self, x: &Tensor, t: &Tensor, cond: &Conditioning, train: bool) -> Tensor {
        self.forward_impl(x, t, cond.class(), train, None)
    }

    fn forward_with_attention(&self, x: &Tensor, t: &Tensor, cond: &Conditioning) -> Option<(Tensor, AttentionMaps)> {
        let mut captured = Vec::new();
        let out = self.forward_impl(x, t, cond.class(), false, Some(&mut captured));
        Some((out, captured))
    }

    fn flops_per_sample(&self) -> Option<f64> {
        Some(unet_forward_flops(&self.config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn tiny(channels: i64, size: i64, mult: Vec<i64>, attn: Vec<i64>) -> UNetConfig {
        UNetConfig {
            channels: 16,
            channel_mult: mult,
            res_blocks: 1,
            attention_resolutions: attn,
            heads: 2,
            groups: 8,
            in_channels: channels,
            out_channels: channels,
            image_size: size,
            num_classes: 3,
            ..Default::default()
        }
    }

    #[test]
    fn output_shape_matches_input_for_several_configs() {
        for (ch, size, mult, attn) in
            [(1, 16, vec![1, 2], vec![8]), (3, 32, vec![1, 2, 2], vec![16, 8]), (1, 20, vec![1, 2, 2], vec![]), (3, 8, vec![1], vec![8])]
        {
            let vs = nn::VarStore::new(Device::Cpu);
            let cfg = tiny(ch, size, mult.clone(), attn);
            let net = UNet::new(&vs.root(), &cfg).unwrap();
            let x = Tensor::randn([2, ch, size, size], (Kind::Float, Device::Cpu));
            let t = Tensor::from_slice(&[10i64, 500]);
            let c = Tensor::from_slice(&[0i64, 3]);
            let y = net.forward(&x, &t, &Conditioning::Class(c), false);
            assert_eq!(y.size(), vec![2, ch, size, size], "config {mult:?} at {size}");
        }
    }

    #[test]
    fn untrained_output_is_zero_and_names_are_readable() {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = UNet::new(&vs.root(), &tiny(1, 16, vec![1, 2], vec![8])).unwrap();
        let x = Tensor::randn([1, 1, 16, 16], (Kind::Float, Device::Cpu));
        let y = net.forward(&x, &Tensor::from_slice(&[3i64]), &Conditioning::None, false);
        assert_eq!(y.abs().max().double_value(&[]), 0.0);
        let names: Vec<String> = vs.variables().into_keys().collect();
        for expected in [
            "conv_in.weight",
            "down.0.res.0.conv1.weight",
            "down.1.attn.0.to_q.weight",
            "mid.attn.to_out.weight",
            "up.0.res.1.skip.weight",
            "class_embedding.weight",
            "time_embedding.linear_1.weight",
        ] {
            assert!(names.iter().any(|n| n == expected), "missing {expected} in {names:?}");
        }
    }

    #[test]
    fn attention_weights_are_captured_per_layer_and_rows_sum_to_one() {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = UNet::new(&vs.root(), &tiny(1, 16, vec![1, 2], vec![8])).unwrap();
        let x = Tensor::randn([2, 1, 16, 16], (Kind::Float, Device::Cpu));
        let (y, attn) = net.forward_with_attention(&x, &Tensor::from_slice(&[3i64, 9]), &Conditioning::None).unwrap();
        assert!(y.equal(&net.forward(&x, &Tensor::from_slice(&[3i64, 9]), &Conditioning::None, false)));
        let names: Vec<&str> = attn.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["down.1.attn.0", "mid.attn", "up.1.attn.0", "up.1.attn.1"]);
        for (_, w) in &attn {
            assert_eq!(w.size(), vec![2, 2, 64, 64]);
            let err = (w.sum_dim_intlist([-1i64].as_slice(), false, Kind::Float) - 1.0).abs().max().double_value(&[]);
            assert!(err < 1e-5);
        }
    }

    #[test]
    fn reference_preset_has_the_reference_parameter_count() {
        // 6,140,675 parameters: the count unet_bench.py prints for its UNet(64).
        let vs = nn::VarStore::new(Device::Cpu);
        let mut cfg = UNetConfig::preset("ref6m").unwrap();
        cfg.out_channels = 3;
        UNet::new(&vs.root(), &cfg).unwrap();
        assert_eq!(crate::weights::parameter_count(&vs), REF6M_PARAMS);
    }

    const REF6M_PARAMS: i64 = 6_140_675;

    #[test]
    fn the_parameter_estimate_is_close_and_bounds_absurd_models() {
        let mut cfg = UNetConfig::preset("ref6m").unwrap();
        cfg.out_channels = 3;
        let estimate = cfg.parameter_estimate();
        assert!((estimate / REF6M_PARAMS as f64 - 1.0).abs() < 0.02, "{estimate}");
        let huge = UNetConfig { channels: 4096, channel_mult: vec![1, 16, 16], ..cfg };
        assert_eq!(huge.validate().unwrap_err().key, "model.channels");
    }

    #[test]
    fn bad_configs_name_the_key() {
        let mut cfg = tiny(1, 20, vec![1, 2, 2], vec![]);
        cfg.channel_mult = vec![1, 2, 2, 2];
        let err = cfg.validate().unwrap_err();
        assert_eq!(err.key, "model.image_size", "{err}");
        let mut cfg = tiny(1, 16, vec![1, 2], vec![]);
        cfg.groups = 5;
        assert_eq!(cfg.validate().unwrap_err().key, "model.groups");
    }
}
