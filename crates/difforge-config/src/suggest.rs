//! "Did you mean" for unknown config keys: the names kohya's sd-scripts and diffusers' training
//! scripts give their settings (what users coming from them type first) mapped to difforge's, and
//! near misses of the section's own keys by edit distance.

/// kohya's (`train_network.py`, dataset TOML) and diffusers' (`train_*.py` flags) names of
/// settings difforge has, with difforge's key and, where the value differs in kind, how.
const OTHER_TOOLS: &[(&str, &str)] = &[
    ("learning_rate", "train.lr"),
    ("unet_lr", "train.lr"),
    ("max_train_steps", "train.steps"),
    ("num_train_epochs", "train.steps (difforge counts steps, not epochs)"),
    ("train_batch_size", "train.batch_size"),
    ("gradient_accumulation_steps", "train.grad_accum"),
    ("lr_warmup_steps", "train.warmup_steps"),
    ("lr_scheduler", "train.lr_schedule"),
    ("max_grad_norm", "train.grad_clip"),
    ("mixed_precision", "train.precision"),
    ("save_every_n_steps", "train.checkpoint_every"),
    ("checkpointing_steps", "train.checkpoint_every"),
    ("sample_every_n_steps", "train.sample_every"),
    ("validation_steps", "train.sample_every"),
    ("save_last_n_steps", "train.keep_checkpoints"),
    ("checkpoints_total_limit", "train.keep_checkpoints"),
    ("ema_decay", "train.ema_decay"),
    ("network_dim", "lora.rank"),
    ("rank", "lora.rank"),
    ("network_alpha", "lora.alpha"),
    ("network_dropout", "lora.dropout"),
    ("network_train_text_encoder_only", "lora.text_encoder"),
    ("pretrained_model_name_or_path", "model.base"),
    ("pretrained_model_name", "model.base"),
    ("train_data_dir", "data.path"),
    ("image_dir", "data.path"),
    ("resolution", "data.image_size (or data.buckets.resolution)"),
    ("caption_column", "data.caption_column"),
    ("num_repeats", "data.subsets[].repeats"),
    ("flip_aug", "data.augment.hflip (a probability: 0.5)"),
    ("random_flip", "data.augment.hflip (a probability: 0.5)"),
    ("center_crop", "data.crop = \"center\""),
    ("random_crop", "data.crop = \"random\""),
    ("enable_bucket", "[data.buckets]"),
    ("clip_skip", "model.clip_skip"),
    ("shuffle_caption", "model.shuffle_caption"),
    ("keep_tokens", "model.keep_tokens"),
    ("cache_latents", "model.cache_dir (a folder)"),
    ("cache_latents_to_disk", "model.cache_dir (a folder)"),
    ("validation_prompt", "model.preview_prompts"),
    ("sample_prompts", "model.preview_prompt_file"),
    ("caption_dropout_rate", "diffusion.class_dropout"),
    ("min_snr_gamma", "diffusion.min_snr_gamma"),
    ("snr_gamma", "diffusion.min_snr_gamma"),
    ("noise_offset", "diffusion.noise_offset"),
    ("v_parameterization", "diffusion.prediction = \"v\" (read from the base's scheduler)"),
    ("prediction_type", "diffusion.prediction (read from the base's scheduler)"),
    ("zero_terminal_snr", "diffusion.zero_terminal_snr"),
    ("huber_c", "diffusion.huber_c"),
    ("loss_type", "diffusion.loss"),
    ("prior_loss_weight", "finetune.prior_weight"),
    ("with_prior_preservation", "finetune.prior_preservation"),
    ("num_class_images", "finetune.prior_per_class"),
    ("class_prompt", "finetune.class_prompt"),
    ("instance_prompt", "data.instance_prompt"),
    ("output_dir", "the --out flag"),
    ("output_name", "the --out flag (the run folder's name)"),
];

/// What to suggest for `field`, unknown in section `section` (e.g. "train"), whose own keys are
/// `expected`: another tool's name for one of difforge's keys, else the nearest own key.
pub fn suggestion(section: &str, field: &str, expected: &[&str]) -> Option<String> {
    if let Some((_, ours)) = OTHER_TOOLS.iter().find(|(theirs, _)| *theirs == field) {
        return Some(format!("did you mean {ours}? (`{field}` is kohya's or diffusers' name)"));
    }
    let near = expected.iter().map(|k| (edit_distance(field, k), *k)).filter(|(d, k)| *d <= 2.max(k.len() / 4)).min()?;
    let key = if section.is_empty() { near.1.to_string() } else { format!("{section}.{}", near.1) };
    Some(format!("did you mean {key}?"))
}

/// The keys serde lists in "unknown field `x`, expected one of `a`, `b`" (or "expected `a` or `b`").
pub fn expected_fields(message: &str) -> Vec<&str> {
    let Some((_, list)) = message.split_once("expected") else { return Vec::new() };
    list.split('`').skip(1).step_by(2).collect()
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substituted = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substituted.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_tools_names_and_near_misses_are_suggested() {
        let train = ["steps", "batch_size", "lr", "warmup_steps"];
        assert_eq!(suggestion("train", "learning_rate", &train).unwrap(), "did you mean train.lr? (`learning_rate` is kohya's or diffusers' name)");
        assert_eq!(suggestion("train", "stpes", &train).unwrap(), "did you mean train.steps?");
        assert_eq!(suggestion("train", "batchsize", &train).unwrap(), "did you mean train.batch_size?");
        assert_eq!(suggestion("train", "colour", &train), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn serdes_expected_list_is_read() {
        assert_eq!(expected_fields("unknown field `stepz`, expected one of `steps`, `batch_size`"), ["steps", "batch_size"]);
        assert_eq!(expected_fields("unknown field `x`, expected `a` or `b`"), ["a", "b"]);
        assert!(expected_fields("invalid type").is_empty());
    }
}
