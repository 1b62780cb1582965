//! How a run trained, in kohya's `ss_*` metadata keys: what the webui, Civitai and sd-scripts'
//! own tools show of a LoRA file.

use difforge_config::RunConfig;
use difforge_data::{DataConfig, ImageSet};
use serde::Serialize;
use std::collections::BTreeMap;

/// The training images as sd-scripts records them: per image folder, its images, repeats and
/// how often each caption tag occurs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DatasetRecord {
    dirs: BTreeMap<String, DirRecord>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct DirRecord {
    repeats: u32,
    images: usize,
    /// Comma-separated caption tags, trimmed, counted once per image (sd-scripts' rule).
    tags: BTreeMap<String, u64>,
}

#[derive(Serialize)]
struct DirEntry {
    n_repeats: u32,
    img_count: usize,
}

impl DatasetRecord {
    /// The record of the training images `train` of `set`, read with `data`.
    pub fn of(data: &DataConfig, set: &ImageSet, train: &[usize]) -> DatasetRecord {
        let mut dirs: BTreeMap<String, DirRecord> = BTreeMap::new();
        for &i in train {
            let subset = set.subset_of.get(i).and_then(|&k| data.subsets.get(k));
            let folder = subset.map(|s| s.path.as_path()).or(data.path.as_deref());
            let name = folder.and_then(|p| p.file_name()).map_or_else(|| data.source.name().to_string(), |n| n.to_string_lossy().into_owned());
            let dir = dirs.entry(name).or_default();
            dir.repeats = set.rules(i).map_or(1, |r| r.repeats);
            dir.images += 1;
            let caption = set.captions.get(i).and_then(Option::as_deref).unwrap_or("");
            for tag in caption.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                *dir.tags.entry(tag.to_string()).or_default() += 1;
            }
        }
        DatasetRecord { dirs }
    }

    /// `ss_tag_frequency`, `ss_dataset_dirs` and `ss_num_train_images` (images times repeats),
    /// the first two as JSON text as sd-scripts writes them.
    fn entries(&self) -> Vec<(&'static str, String)> {
        let tags: BTreeMap<&String, &BTreeMap<String, u64>> = self.dirs.iter().map(|(name, d)| (name, &d.tags)).collect();
        let dirs: BTreeMap<&String, DirEntry> = self.dirs.iter().map(|(name, d)| (name, DirEntry { n_repeats: d.repeats, img_count: d.images })).collect();
        let images: usize = self.dirs.values().map(|d| d.images * d.repeats as usize).sum();
        vec![("ss_tag_frequency", json(&tags)), ("ss_dataset_dirs", json(&dirs)), ("ss_num_train_images", images.to_string())]
    }
}

/// The maps above as JSON text (maps of strings and numbers always serialise).
fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "{}".to_string())
}

/// The run's settings and its dataset as kohya's `ss_*` keys, after `steps` steps.
pub fn training_record(cfg: &RunConfig, steps: u64, dataset: &DatasetRecord) -> Vec<(String, String)> {
    let t = &cfg.train;
    let size = cfg.data.buckets.as_ref().map_or(i64::from(cfg.data.image_size), |b| i64::from(b.resolution));
    [
        ("ss_steps", steps.to_string()),
        ("ss_max_train_steps", t.steps.to_string()),
        ("ss_learning_rate", t.lr.to_string()),
        ("ss_lr_scheduler", t.lr_schedule.name().to_string()),
        ("ss_lr_warmup_steps", t.warmup_steps.to_string()),
        ("ss_batch_size_per_device", t.batch_size.to_string()),
        ("ss_gradient_accumulation_steps", t.grad_accum.to_string()),
        ("ss_max_grad_norm", t.grad_clip.to_string()),
        ("ss_seed", cfg.seed.to_string()),
        ("ss_resolution", format!("({size}, {size})")),
        ("ss_min_snr_gamma", cfg.diffusion.min_snr_gamma.to_string()),
        ("ss_noise_offset", cfg.diffusion.noise_offset.to_string()),
        ("ss_caption_dropout_rate", cfg.diffusion.class_dropout.to_string()),
        ("ss_network_dropout", cfg.lora.as_ref().map_or(0.0, |l| l.dropout).to_string()),
        ("ss_mixed_precision", t.precision.name().to_string()),
    ]
    .into_iter()
    .chain(dataset.entries())
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use difforge_data::subset::SubsetRules;

    fn set(captions: &[Option<&str>], subset_of: Vec<usize>) -> ImageSet {
        ImageSet { captions: captions.iter().map(|c| c.map(str::to_string)).collect(), subset_of, ..ImageSet::default() }
    }

    #[test]
    fn tags_are_counted_once_per_training_image_per_folder() {
        let data = DataConfig { path: Some("/data/10_sks dog".into()), ..DataConfig::default() };
        let images = set(&[Some("sks dog, grass ,grass"), Some("sks dog, sofa"), Some("held out, sofa"), None], Vec::new());
        let record = DatasetRecord::of(&data, &images, &[0, 1, 3]);
        let entries: BTreeMap<_, _> = record.entries().into_iter().collect();
        assert_eq!(entries["ss_tag_frequency"], r#"{"10_sks dog":{"grass":2,"sks dog":2,"sofa":1}}"#);
        assert_eq!(entries["ss_dataset_dirs"], r#"{"10_sks dog":{"n_repeats":1,"img_count":3}}"#);
        assert_eq!(entries["ss_num_train_images"], "3");
    }

    #[test]
    fn subsets_are_recorded_by_folder_with_their_repeats() {
        let subset = |path: &str| serde_json::from_str::<difforge_data::SubsetConfig>(&format!(r#"{{"path": "{path}"}}"#)).unwrap();
        let data = DataConfig { subsets: vec![subset("/d/instance"), subset("/d/class")], ..DataConfig::default() };
        let mut images = set(&[Some("sks"), Some("dog"), Some("dog")], vec![0, 1, 1]);
        images.subset_rules =
            vec![SubsetRules { repeats: 10, caption: Default::default(), hflip: None }, SubsetRules { repeats: 1, caption: Default::default(), hflip: None }];
        let entries: BTreeMap<_, _> = DatasetRecord::of(&data, &images, &[0, 1, 2]).entries().into_iter().collect();
        assert_eq!(entries["ss_dataset_dirs"], r#"{"class":{"n_repeats":1,"img_count":2},"instance":{"n_repeats":10,"img_count":1}}"#);
        assert_eq!(entries["ss_tag_frequency"], r#"{"class":{"dog":2},"instance":{"sks":1}}"#);
        assert_eq!(entries["ss_num_train_images"], "12");
    }
}
