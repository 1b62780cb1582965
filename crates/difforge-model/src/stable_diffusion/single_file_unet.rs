//! The UNet's names in a CompVis / SGM checkpoint (`model.diffusion_model.*`): one flat list
//! of `input_blocks` (conv_in, then per level a resnet and its transformer per layer, then the
//! downsampler), `middle_block` (resnet, transformer, resnet) and `output_blocks` (per level,
//! one layer more, the last ending in the upsampler), with the timestep MLP as `time_embed` and
//! SDXL's added embedding as `label_emb`. The transformers keep diffusers' names inside.

use super::single_file_rules::{rename, Rename, Rule, Rules};
use difforge_nn::sd::unet_config::UNet2DConditionConfig;
use difforge_nn::NnError;

const RESNET: &[Rename] = &[
    rename("norm1", "in_layers.0"),
    rename("conv1", "in_layers.2"),
    rename("norm2", "out_layers.0"),
    rename("conv2", "out_layers.3"),
    rename("time_emb_proj", "emb_layers.1"),
    rename("conv_shortcut", "skip_connection"),
];

/// The fixed modules (diffusers, original).
const FIXED: &[(&str, &str)] = &[
    ("time_embedding.linear_1", "time_embed.0"),
    ("time_embedding.linear_2", "time_embed.2"),
    ("add_embedding.linear_1", "label_emb.0.0"),
    ("add_embedding.linear_2", "label_emb.0.2"),
    ("conv_in", "input_blocks.0.0"),
    ("conv_norm_out", "out.0"),
    ("conv_out", "out.2"),
    ("mid_block.attentions.0", "middle_block.1"),
];

/// The rules for a UNet of `config` (the block numbering follows its levels and layers).
pub fn rules(config: &UNet2DConditionConfig) -> Result<Rules, NnError> {
    let levels = config.levels()?;
    let last = levels.len() - 1;
    let mut rules: Vec<Rule> = FIXED.iter().map(|(d, o)| Rule::new(*d, *o, &[])).collect();
    rules.push(Rule::new("mid_block.resnets.0", "middle_block.0", RESNET));
    rules.push(Rule::new("mid_block.resnets.1", "middle_block.2", RESNET));
    let mut block = 1;
    for (i, level) in levels.iter().enumerate() {
        for j in 0..level.layers {
            rules.push(Rule::new(format!("down_blocks.{i}.resnets.{j}"), format!("input_blocks.{block}.0"), RESNET));
            rules.push(Rule::new(format!("down_blocks.{i}.attentions.{j}"), format!("input_blocks.{block}.1"), &[]));
            block += 1;
        }
        if i < last {
            rules.push(Rule::new(format!("down_blocks.{i}.downsamplers.0.conv"), format!("input_blocks.{block}.0.op"), &[]));
            block += 1;
        }
    }
    let mut block = 0;
    for (u, level) in levels.iter().rev().enumerate() {
        for j in 0..=level.layers {
            rules.push(Rule::new(format!("up_blocks.{u}.resnets.{j}"), format!("output_blocks.{block}.0"), RESNET));
            rules.push(Rule::new(format!("up_blocks.{u}.attentions.{j}"), format!("output_blocks.{block}.1"), &[]));
            if j == level.layers && u < last {
                // The upsampler comes after the layer's transformer, where the level has one.
                let at = if level.down_attention { 2 } else { 1 };
                rules.push(Rule::new(format!("up_blocks.{u}.upsamplers.0.conv"), format!("output_blocks.{block}.{at}.conv"), &[]));
            }
            block += 1;
        }
    }
    Ok(Rules(rules))
}
