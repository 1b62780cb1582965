//! Webdataset shards on real files: written from an image folder, streamed back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use difforge_data::config::{CropMode, SourceKind};
use difforge_data::{source, write_shards, AugmentConfig, Batch, DataConfig, Loader, ShardStream};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const SEED: u64 = 11;

/// 24 images 10 wide and 12 high, each with a caption naming it: 11 in `cat/`, 11 in `dog/`,
/// 2 unlabelled at the top. Returns the captions.
fn write_folder(root: &Path) -> BTreeSet<String> {
    let mut captions = BTreeSet::new();
    for i in 0..24u32 {
        let (dir, name) = match i {
            0..=10 => (root.join("cat"), format!("cat-{i:02}")),
            11..=21 => (root.join("dog"), format!("dog-{i:02}")),
            _ => (root.to_path_buf(), format!("loose-{i:02}")),
        };
        std::fs::create_dir_all(&dir).unwrap();
        let img = image::RgbImage::from_fn(10, 12, |x, y| image::Rgb([(i * 10 + x) as u8, (y * 20) as u8, (255 - i * 7) as u8]));
        img.save(dir.join(format!("{name}.png"))).unwrap();
        std::fs::write(dir.join(format!("{name}.txt")), format!("{name}\n")).unwrap();
        captions.insert(name);
    }
    captions
}

/// The folder of `write_folder` as shards of 4 (6 shards), with the folder and shard paths.
fn sharded(dir: &Path) -> (PathBuf, PathBuf, BTreeSet<String>) {
    let folder = dir.join("images");
    let captions = write_folder(&folder);
    let shards = dir.join("shards");
    let report = write_shards(&folder, &shards, 4).unwrap();
    assert_eq!(report.index.images, 24);
    assert_eq!(report.index.images_per_shard, vec![4; 6]);
    (folder, shards, captions)
}

fn stream_config(path: &Path) -> DataConfig {
    DataConfig { source: SourceKind::Webdataset, path: Some(path.to_path_buf()), image_size: 8, channels: 3, shuffle_buffer: 5, ..Default::default() }
}

fn captions_of(batches: &[Batch]) -> Vec<String> {
    batches.iter().flat_map(|b| b.captions.iter().map(|c| c.clone().unwrap())).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn every_image_comes_once_per_epoch_with_its_label() {
    let dir = tempfile::tempdir().unwrap();
    let (_, shards, captions) = sharded(dir.path());
    let mut stream = ShardStream::open(&stream_config(&shards), SEED, 0, 1).unwrap();
    assert_eq!(stream.shards().len(), 6);
    assert_eq!(stream.class_names(), ["cat", "dog"]);
    let batches: Vec<Batch> = (0..8).map(|d| stream.batch(d, 6).unwrap()).collect();
    let (first, second) = (captions_of(&batches[..4]), captions_of(&batches[4..]));
    let all: Vec<String> = captions.iter().cloned().collect();
    assert_eq!(sorted(first.clone()), all);
    assert_eq!(sorted(second.clone()), all);
    assert_ne!(first, second, "each epoch has its own order");
    for b in &batches {
        assert_eq!((b.size, b.channels, b.height, b.width, b.images.len()), (6, 3, 8, 8, 6 * 3 * 64));
        for (caption, &label) in b.captions.iter().zip(&b.labels) {
            let expected = match &caption.as_deref().unwrap()[..3] {
                "cat" => 0,
                "dog" => 1,
                _ => -1,
            };
            assert_eq!(label, expected, "{caption:?}");
        }
    }
}

#[test]
fn two_ranks_see_disjoint_halves() {
    let dir = tempfile::tempdir().unwrap();
    let (_, shards, captions) = sharded(dir.path());
    let cfg = stream_config(&shards);
    // 6 shards of 4 over 2 ranks: 12 images per rank and epoch.
    let half = |rank| {
        let mut s = ShardStream::open(&cfg, SEED, rank, 2).unwrap();
        captions_of(&(0..3).map(|d| s.batch(d, 4).unwrap()).collect::<Vec<_>>())
    };
    let (a, b) = (half(0), half(1));
    let (sa, sb): (BTreeSet<String>, BTreeSet<String>) = (a.iter().cloned().collect(), b.iter().cloned().collect());
    assert_eq!((sa.len(), sb.len()), (12, 12), "{a:?} {b:?}");
    assert!(sa.is_disjoint(&sb));
    assert_eq!(sa.union(&sb).cloned().collect::<BTreeSet<_>>(), captions);
}

#[test]
fn any_draw_is_rebuilt_by_a_fresh_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (_, shards, _) = sharded(dir.path());
    let augment = AugmentConfig { hflip: 0.5, rotate: 0.5, ..Default::default() };
    let cfg = DataConfig { crop: CropMode::Random, augment, ..stream_config(&shards) };
    let mut running = ShardStream::open(&cfg, SEED, 0, 1).unwrap();
    // Batches of 5 over epochs of 24: draw 7 starts in the second epoch.
    let batches: Vec<Batch> = (0..10).map(|d| running.batch(d, 5).unwrap()).collect();
    let mut resumed = ShardStream::open(&cfg, SEED, 0, 1).unwrap();
    assert_eq!(resumed.batch(7, 5).unwrap(), batches[7]);
    assert_eq!(resumed.batch(8, 5).unwrap(), batches[8]);
    // Backwards, within an epoch and into an earlier one.
    assert_eq!(resumed.batch(2, 5).unwrap(), batches[2]);
    assert_eq!(running.batch(4, 5).unwrap(), batches[4]);
    // Another seed is another stream.
    assert_ne!(ShardStream::open(&cfg, SEED + 1, 0, 1).unwrap().batch(7, 5).unwrap(), batches[7]);
}

#[test]
fn pixels_match_the_in_memory_folder_loader() {
    let dir = tempfile::tempdir().unwrap();
    let (folder, shards, _) = sharded(dir.path());
    let folder_cfg = DataConfig { source: SourceKind::Folder, path: Some(folder), image_size: 8, channels: 3, ..Default::default() };
    let set = Arc::new(source::load(&folder_cfg).unwrap());
    let loader = Loader::new(set.clone(), (0..set.len()).collect(), 8, CropMode::Center, AugmentConfig::default(), SEED);
    let expected: BTreeMap<String, Vec<f32>> = (0..set.len()).map(|i| (set.captions[i].clone().unwrap(), loader.fixed_batch(&[i]).images)).collect();

    let mut stream = ShardStream::open(&stream_config(&shards), SEED, 0, 1).unwrap();
    let batch = stream.batch(0, 24).unwrap();
    let per_image = 3 * 64;
    for (j, caption) in batch.captions.iter().enumerate() {
        let got = &batch.images[j * per_image..(j + 1) * per_image];
        assert_eq!(got, expected[caption.as_deref().unwrap()].as_slice(), "{caption:?}");
    }
    assert!(batch.images.iter().any(|&v| v > -1.0 && v < 1.0));
}

#[test]
fn a_corrupt_image_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("images");
    for i in 0..5u8 {
        std::fs::create_dir_all(folder.join("a")).unwrap();
        image::GrayImage::from_pixel(8, 8, image::Luma([i * 40])).save(folder.join(format!("a/{i}.png"))).unwrap();
        std::fs::write(folder.join(format!("a/{i}.txt")), format!("good-{i}")).unwrap();
    }
    std::fs::write(folder.join("a/broken.png"), b"\x89PNG\r\n\x1a\n\0\0\0\rIHDRtruncated").unwrap();
    std::fs::write(folder.join("a/broken.txt"), "broken").unwrap();
    let shards = dir.path().join("shards");
    assert_eq!(write_shards(&folder, &shards, 3).unwrap().index.images, 6);

    let mut stream = ShardStream::open(&stream_config(&shards), SEED, 0, 1).unwrap();
    let batch = stream.batch(0, 6).unwrap();
    assert_eq!(batch.size, 6);
    assert_eq!(stream.skipped(), 1);
    let seen: BTreeSet<String> = batch.captions.iter().map(|c| c.clone().unwrap()).collect();
    assert_eq!(seen, (0..5).map(|i| format!("good-{i}")).collect());
    // The next epoch meets it again; the count grows, the stream goes on.
    stream.batch(1, 6).unwrap();
    assert_eq!(stream.skipped(), 2);
}

#[test]
fn a_brace_pattern_names_the_same_shards() {
    let dir = tempfile::tempdir().unwrap();
    let (_, shards, _) = sharded(dir.path());
    let pattern = shards.join("{000000..000005}.tar");
    let mut by_pattern = ShardStream::open(&stream_config(&pattern), SEED, 0, 1).unwrap();
    let mut by_folder = ShardStream::open(&stream_config(&shards), SEED, 0, 1).unwrap();
    assert_eq!(by_pattern.shards(), by_folder.shards());
    assert_eq!(by_pattern.class_names(), ["cat", "dog"]);
    assert_eq!(by_pattern.batch(3, 6).unwrap(), by_folder.batch(3, 6).unwrap());

    let first_two = ShardStream::open(&stream_config(&shards.join("{0..1}.tar")), SEED, 0, 1).err().unwrap().to_string();
    assert!(first_two.contains("0.tar does not"), "{first_two}");
    let too_many = ShardStream::open(&stream_config(&shards.join("{000000..000007}.tar")), SEED, 0, 1).err().unwrap().to_string();
    assert!(too_many.contains("000006.tar does not"), "{too_many}");
}

#[test]
fn bad_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_, shards, _) = sharded(dir.path());
    let missing = dir.path().join("nowhere");
    let err = ShardStream::open(&stream_config(&missing), SEED, 0, 1).err().unwrap().to_string();
    assert!(err.contains("nowhere") && err.contains("folder of *.tar"), "{err}");
    let err = ShardStream::open(&stream_config(&shards), SEED, 0, 7).err().unwrap().to_string();
    assert!(err.contains("6 shard(s) for 7 ranks"), "{err}");
    let err = ShardStream::open(&DataConfig { shuffle_buffer: 0, ..stream_config(&shards) }, SEED, 0, 1).err().unwrap().to_string();
    assert!(err.contains("data.shuffle_buffer"), "{err}");
    let err = source::load(&stream_config(&shards)).unwrap_err().to_string();
    assert!(err.contains("ShardStream"), "{err}");
    let err = write_shards(&dir.path().join("images"), &shards, 4).unwrap_err().to_string();
    assert!(err.contains("not empty"), "{err}");
}

/// One shard in `dir` with one 8x8 image `sample7` and its `.cls` entry.
fn one_sample_shard(dir: &Path, class: &[u8]) {
    one_sample_shard_with(dir, &[("sample7.cls", class)]);
}

/// One shard in `dir` with one 8x8 image `sample7` and `entries` beside it.
fn one_sample_shard_with(dir: &Path, entries: &[(&str, &[u8])]) {
    let mut png = Vec::new();
    image::GrayImage::new(8, 8).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    let mut tar = tar::Builder::new(std::fs::File::create(dir.join("000000.tar")).unwrap());
    for &(name, data) in [("sample7.png", png.as_slice())].iter().chain(entries) {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, name, data).unwrap();
    }
    tar.finish().unwrap();
}

#[test]
fn a_bad_class_entry_names_shard_and_key() {
    let dir = tempfile::tempdir().unwrap();
    one_sample_shard(dir.path(), b"seven");
    let mut stream = ShardStream::open(&stream_config(dir.path()), SEED, 0, 1).unwrap();
    let err = stream.batch(0, 1).unwrap_err().to_string();
    assert!(err.contains("000000.tar") && err.contains("sample7") && err.contains("seven"), "{err}");
}

#[test]
fn a_caption_that_is_not_utf8_names_shard_and_key() {
    let dir = tempfile::tempdir().unwrap();
    one_sample_shard_with(dir.path(), &[("sample7.txt", b"caf\xe9")]);
    let err = ShardStream::open(&stream_config(dir.path()), SEED, 0, 1).unwrap().batch(0, 1).unwrap_err().to_string();
    assert!(err.contains("000000.tar") && err.contains("sample7") && err.contains("byte 3 is not valid UTF-8"), "{err}");
}

/// A label past the model's classes is an error naming the sample (it indexed past the class
/// embedding and panicked), not only past the shards' class names.
#[test]
fn a_class_the_model_does_not_have_is_refused_by_sample() {
    let dir = tempfile::tempdir().unwrap();
    one_sample_shard(dir.path(), b"999999999");
    let mut stream = ShardStream::open(&stream_config(dir.path()), SEED, 0, 1).unwrap().for_model_classes(Some(2));
    let err = stream.batch(0, 1).unwrap_err().to_string();
    assert!(err.contains("000000.tar") && err.contains("sample7") && err.contains("class 999999999") && err.contains("2 classes"), "{err}");
    let mut unbounded = ShardStream::open(&stream_config(dir.path()), SEED, 0, 1).unwrap();
    assert_eq!(unbounded.batch(0, 1).unwrap().labels, vec![999_999_999]);
}

#[test]
fn shards_hold_the_original_bytes_and_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let (folder, shards, _) = sharded(dir.path());
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(shards.join("dataset.json")).unwrap()).unwrap();
    assert_eq!(index["images"], 24);
    assert_eq!(index["shards"].as_array().unwrap().len(), 6);
    assert_eq!(index["class_names"], serde_json::json!(["cat", "dog"]));
    let mut archive = tar::Archive::new(std::fs::File::open(shards.join("000000.tar")).unwrap());
    let names: Vec<(String, Vec<u8>)> = archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            (e.path().unwrap().display().to_string(), data)
        })
        .collect();
    // The folder source's first file is cat/cat-00.png (sorted paths).
    assert_eq!(names[0].0, "000000_cat_cat-00.png");
    assert_eq!(names[0].1, std::fs::read(folder.join("cat/cat-00.png")).unwrap());
    assert_eq!((names[1].0.as_str(), names[1].1.as_slice()), ("000000_cat_cat-00.cls", b"0".as_slice()));
    assert_eq!((names[2].0.as_str(), names[2].1.as_slice()), ("000000_cat_cat-00.txt", b"cat-00".as_slice()));
    assert!(names.iter().all(|(n, _)| n.matches('.').count() == 1 && !n.contains('/')), "{names:?}");
}

#[test]
fn shards_carry_the_captions_of_a_metadata_file() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("images");
    let names = write_folder(&folder);
    // metadata.jsonl wins over the sidecars for the images it names; the others keep theirs.
    std::fs::write(folder.join("metadata.jsonl"), "{\"file_name\": \"cat/cat-00.png\", \"text\": \"a tabby, from metadata\"}\n").unwrap();
    let shards = dir.path().join("shards");
    write_shards(&folder, &shards, 100).unwrap();
    let mut stream = ShardStream::open(&DataConfig { shuffle_buffer: 1, ..stream_config(&shards) }, SEED, 0, 1).unwrap();
    let got: BTreeSet<String> = captions_of(&[stream.batch(0, 24).unwrap()]).into_iter().collect();
    let mut want = names;
    want.remove("cat-00");
    want.insert("a tabby, from metadata".to_string());
    assert_eq!(got, want);
}
