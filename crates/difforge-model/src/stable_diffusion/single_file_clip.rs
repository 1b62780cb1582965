//! The text encoders' names in a single file. OpenAI's CLIP (SD 1.x, SDXL's first encoder) is
//! saved as transformers names it, under a prefix; OpenCLIP's (SD 2.x, SDXL's second) has its
//! own: `transformer.resblocks.N` with `ln_1`, `ln_2`, `mlp.c_fc`, `mlp.c_proj` and q, k and v
//! fused into `attn.in_proj_*`, `token_embedding`, `positional_embedding`, `ln_final`, and
//! `text_projection` as the matrix it multiplies by.

use super::single_file_rules::{rename, Rename, Reshape, Rule, Rules};
use difforge_nn::sd::ClipTextConfig;

/// How a single file lays out one text encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipLayout {
    /// transformers' names (`text_model.…`) under the prefix.
    Transformers,
    OpenClip,
}

const fn third(diffusers: &'static str, original: &'static str, n: u8) -> Rename {
    Rename { diffusers, original, reshape: Reshape::Third(n) }
}

const LAYER: &[Rename] = &[
    rename("layer_norm1", "ln_1"),
    rename("layer_norm2", "ln_2"),
    rename("mlp.fc1", "mlp.c_fc"),
    rename("mlp.fc2", "mlp.c_proj"),
    rename("self_attn.out_proj", "attn.out_proj"),
    third("self_attn.q_proj.weight", "attn.in_proj_weight", 0),
    third("self_attn.k_proj.weight", "attn.in_proj_weight", 1),
    third("self_attn.v_proj.weight", "attn.in_proj_weight", 2),
    third("self_attn.q_proj.bias", "attn.in_proj_bias", 0),
    third("self_attn.k_proj.bias", "attn.in_proj_bias", 1),
    third("self_attn.v_proj.bias", "attn.in_proj_bias", 2),
];

const TRANSPOSED: &[Rename] = &[Rename { diffusers: "", original: "", reshape: Reshape::Transpose }];

/// The fixed OpenCLIP modules (diffusers, original, renames).
const OPEN_CLIP: &[(&str, &str, &[Rename])] = &[
    ("text_model.embeddings.token_embedding", "token_embedding", &[]),
    ("text_model.embeddings.position_embedding.weight", "positional_embedding", &[]),
    ("text_model.final_layer_norm", "ln_final", &[]),
    ("text_projection.weight", "text_projection", TRANSPOSED),
];

/// The rules for a text encoder of `config` laid out as `layout`.
pub fn rules(layout: ClipLayout, config: &ClipTextConfig) -> Rules {
    match layout {
        ClipLayout::Transformers => Rules(vec![Rule::new("", "", &[])]),
        ClipLayout::OpenClip => {
            let mut rules: Vec<Rule> = OPEN_CLIP.iter().map(|(d, o, renames)| Rule::new(*d, *o, renames)).collect();
            rules.extend(
                (0..config.num_hidden_layers).map(|i| Rule::new(format!("text_model.encoder.layers.{i}"), format!("transformer.resblocks.{i}"), LAYER)),
            );
            Rules(rules)
        }
    }
}
