//! The VAE's names in a CompVis / SGM checkpoint (`first_stage_model.*`): `encoder.down.N` and
//! `decoder.up.N` levels of `block.M` resnets (the decoder's numbered from the lowest
//! resolution, diffusers' from the highest), `mid.block_1` / `attn_1` / `block_2`, `norm_out`,
//! and the mid-block attention's q, k, v and proj_out as 1x1 convolutions.

use super::single_file_rules::{rename, Rename, Reshape, Rule, Rules};
use difforge_nn::sd::autoencoder_kl::AutoencoderKlConfig;

const RESNET: &[Rename] =
    &[rename("norm1", "norm1"), rename("conv1", "conv1"), rename("norm2", "norm2"), rename("conv2", "conv2"), rename("conv_shortcut", "nin_shortcut")];

const fn conv1x1(diffusers: &'static str, original: &'static str) -> Rename {
    Rename { diffusers, original, reshape: Reshape::Conv1x1 }
}

const ATTENTION: &[Rename] = &[
    rename("group_norm", "norm"),
    conv1x1("to_q.weight", "q.weight"),
    conv1x1("to_k.weight", "k.weight"),
    conv1x1("to_v.weight", "v.weight"),
    conv1x1("to_out.0.weight", "proj_out.weight"),
    rename("to_q", "q"),
    rename("to_k", "k"),
    rename("to_v", "v"),
    rename("to_out.0", "proj_out"),
];

/// The modules each half has at the same place (diffusers, original, renames).
const HALF: &[(&str, &str, &[Rename])] = &[
    ("conv_in", "conv_in", &[]),
    ("conv_out", "conv_out", &[]),
    ("conv_norm_out", "norm_out", &[]),
    ("mid_block.resnets.0", "mid.block_1", RESNET),
    ("mid_block.resnets.1", "mid.block_2", RESNET),
    ("mid_block.attentions.0", "mid.attn_1", ATTENTION),
];

/// The rules for a VAE of `config`.
pub fn rules(config: &AutoencoderKlConfig) -> Rules {
    let mut rules = vec![Rule::new("quant_conv", "quant_conv", &[]), Rule::new("post_quant_conv", "post_quant_conv", &[])];
    for half in ["encoder", "decoder"] {
        rules.extend(HALF.iter().map(|(d, o, renames)| Rule::new(format!("{half}.{d}"), format!("{half}.{o}"), renames)));
    }
    let n = config.block_out_channels.len();
    for i in 0..n {
        let up = n - 1 - i;
        for j in 0..config.layers_per_block {
            rules.push(Rule::new(format!("encoder.down_blocks.{i}.resnets.{j}"), format!("encoder.down.{i}.block.{j}"), RESNET));
        }
        for j in 0..=config.layers_per_block {
            rules.push(Rule::new(format!("decoder.up_blocks.{i}.resnets.{j}"), format!("decoder.up.{up}.block.{j}"), RESNET));
        }
        rules.push(Rule::new(format!("encoder.down_blocks.{i}.downsamplers.0.conv"), format!("encoder.down.{i}.downsample.conv"), &[]));
        rules.push(Rule::new(format!("decoder.up_blocks.{i}.upsamplers.0.conv"), format!("decoder.up.{up}.upsample.conv"), &[]));
    }
    Rules(rules)
}
