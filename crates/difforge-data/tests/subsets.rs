//! `[[data.subsets]]`: several folders in one dataset, each with its own repeats, caption
//! extension, instance prompt, caption rules and flip probability; bad settings name the key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use difforge_data::{source, AugmentConfig, CropMode, DataConfig, Loader, SourceKind, SubsetConfig};
use std::path::Path;
use std::sync::Arc;

/// `n` 8x8 images whose red channel is `tag` and green channel the column (so flips show), with
/// captions in files of extension `ext`.
fn folder(dir: &Path, n: usize, tag: u8, ext: &str) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        image::RgbImage::from_fn(8, 8, |x, _| image::Rgb([tag, x as u8 * 30, 0])).save(dir.join(format!("{i}.png"))).unwrap();
        std::fs::write(dir.join(format!("{i}{ext}")), format!("caption {tag} {i}")).unwrap();
    }
}

fn subset(path: &Path) -> SubsetConfig {
    SubsetConfig {
        path: path.to_path_buf(),
        repeats: 1,
        caption_extension: None,
        instance_prompt: None,
        caption_dropout: None,
        shuffle_caption: None,
        keep_tokens: None,
        hflip: None,
    }
}

fn data(subsets: Vec<SubsetConfig>) -> DataConfig {
    DataConfig { source: SourceKind::Folder, channels: 3, image_size: 8, subsets, ..Default::default() }
}

#[test]
fn subsets_merge_with_their_own_captions_repeats_and_flips() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    folder(&a, 2, 100, ".txt");
    folder(&b, 3, 200, ".caption");
    let first = SubsetConfig { repeats: 3, instance_prompt: Some("a photo of sks dog".into()), caption_dropout: Some(0.0), ..subset(&a) };
    let second = SubsetConfig { caption_extension: Some(".caption".into()), hflip: Some(1.0), shuffle_caption: Some(true), keep_tokens: Some(1), ..subset(&b) };
    let cfg = data(vec![first, second]);
    cfg.validate().unwrap();
    let set = Arc::new(source::load(&cfg).unwrap());
    assert_eq!(set.len(), 5);
    assert_eq!(set.ids[0], format!("{}/0.png", a.display()));
    assert_eq!(set.captions[1].as_deref(), Some("a photo of sks dog"));
    assert_eq!(set.captions[4].as_deref(), Some("caption 200 2"), "the second subset reads .caption sidecars");
    assert_eq!(set.subset_of, [0, 0, 1, 1, 1]);
    // The first subset's images appear three times an epoch.
    let all: Vec<usize> = (0..5).collect();
    let repeated = set.repeated(&all);
    assert_eq!(repeated, [0, 0, 0, 1, 1, 1, 2, 3, 4]);
    let mut loader = Loader::new(set.clone(), repeated, 8, CropMode::Center, AugmentConfig::default(), 2);
    let epoch = loader.train_batch(0, 9);
    let from_first = epoch.images.chunks_exact(3 * 64).filter(|img| (img[0] + 1.0) * 127.5 < 150.0).count();
    assert_eq!(from_first, 6, "2 images x 3 repeats in one epoch of 9");
    for (img, rule) in epoch.images.chunks_exact(3 * 64).zip(&epoch.caption_rules) {
        let red = ((img[0] + 1.0) * 127.5).round() as u8;
        // Green channel of the first row: rising left to right, unless the subset flips it.
        let green = &img[64..72];
        if red == 200 {
            assert!(green[0] > green[7], "the second subset always flips");
            assert_eq!((rule.shuffle, rule.keep_tokens, rule.dropout), (Some(true), Some(1), None));
        } else {
            assert!(green[0] < green[7]);
            assert_eq!(rule.dropout, Some(0.0));
        }
    }
}

#[test]
fn bad_subsets_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (data(vec![SubsetConfig { repeats: 0, ..subset(dir.path()) }]), "data.subsets[0].repeats"),
        (data(vec![subset(dir.path()), SubsetConfig { hflip: Some(2.0), ..subset(dir.path()) }]), "data.subsets[1].hflip"),
        (data(vec![SubsetConfig { caption_extension: Some("txt".into()), ..subset(dir.path()) }]), "data.subsets[0].caption_extension"),
        (DataConfig { path: Some(dir.path().to_path_buf()), ..data(vec![subset(dir.path())]) }, "data.path"),
        (DataConfig { source: SourceKind::Idx, ..data(vec![subset(dir.path())]) }, "data.subsets"),
    ];
    for (cfg, key) in cases {
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
}
