//! Turns an image folder into webdataset tar shards (`000000.tar`, `000001.tar`, ...) plus a
//! `dataset.json`, for data that is streamed rather than loaded (`data.source = "webdataset"`).
//! The folder is enumerated exactly as the folder source does it (same order, same class of each
//! first-level subfolder, same captions: a root metadata.jsonl/metadata.csv `text` column, else
//! `.txt` sidecars), and the original image bytes are copied
//! unchanged: nothing is decoded, so writing is as fast as copying, and a file the folder
//! source could not decode is skipped by the reader when a batch meets it.

use crate::error::DataError;
use crate::image_set::SkippedFile;
use crate::source::folder::{class_of, list_images, Listing};
use crate::source::metadata::{folder_captions, CaptionSource};
use difforge_core::ConfigError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// The file beside the shards that says what they hold.
pub const INDEX_FILE: &str = "dataset.json";

/// The contents of `dataset.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShardIndex {
    /// Images written, over all shards.
    pub images: usize,
    /// Shard file names, in order.
    pub shards: Vec<String>,
    /// Images in each shard, in the order of `shards`.
    pub images_per_shard: Vec<usize>,
    /// Class names in label order (the `.cls` entries index them).
    pub class_names: Vec<String>,
}

/// What [`write_shards`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShardReport {
    pub out: PathBuf,
    pub index: ShardIndex,
    /// Files and folders that could not be read, as "path: reason".
    pub skipped: Vec<String>,
}

/// One image file with what the folder source would attach to it.
struct Item {
    file: PathBuf,
    key: String,
    label: Option<usize>,
    caption: Option<String>,
}

/// Writes `folder` as shards of at most `shard_size` images into `out`, which must be missing
/// or empty (shards are never mixed with older ones). Each shard is written atomically.
pub fn write_shards(folder: &Path, out: &Path, shard_size: usize) -> Result<ShardReport, DataError> {
    if shard_size == 0 {
        return Err(ConfigError::new("--shard-size", shard_size, "at least 1 image per shard").into());
    }
    if !folder.is_dir() {
        return Err(ConfigError::new("the image folder", folder.display(), "an existing folder of images").into());
    }
    require_empty(out)?;
    let Listing { files, skipped } = list_images(folder)?;
    let (items, class_names) = items_of(folder, &files)?;
    if items.is_empty() {
        return Err(DataError::NoImages { path: folder.to_path_buf(), skipped: skipped.len() });
    }
    std::fs::create_dir_all(out).map_err(|e| DataError::io(out, e))?;
    let mut report = ShardReport { out: out.to_path_buf(), index: ShardIndex { class_names, ..Default::default() }, skipped: describe(&skipped) };
    for (n, chunk) in items.chunks(shard_size).enumerate() {
        let name = format!("{n:06}.tar");
        let written = write_one_shard(&out.join(&name), chunk, &mut report.skipped)?;
        report.index.images += written;
        report.index.shards.push(name);
        report.index.images_per_shard.push(written);
    }
    let json = serde_json::to_vec_pretty(&report.index).map_err(|e| DataError::shard(out.join(INDEX_FILE), e))?;
    difforge_core::write_atomic(&out.join(INDEX_FILE), &json).map_err(|e| DataError::io(out.join(INDEX_FILE), e))?;
    Ok(report)
}

/// Refuses an output folder that already holds anything (or is a file).
fn require_empty(out: &Path) -> Result<(), DataError> {
    if !out.exists() {
        return Ok(());
    }
    let expected = "a new or empty folder (shards are never written among other files)";
    if !out.is_dir() {
        return Err(ConfigError::new("--out", out.display(), expected).into());
    }
    let mut entries = std::fs::read_dir(out).map_err(|e| DataError::io(out, e))?;
    if entries.next().is_some() {
        return Err(ConfigError::new("--out", out.display(), format!("{expected}; it is not empty")).into());
    }
    Ok(())
}

/// The images in folder-source order with their labels (sorted class names, as the folder
/// source labels them), captions and unique keys.
fn items_of(folder: &Path, files: &[PathBuf]) -> Result<(Vec<Item>, Vec<String>), DataError> {
    let class_names: Vec<String> = files.iter().filter_map(|f| class_of(folder, f)).collect::<BTreeSet<_>>().into_iter().collect();
    let captions = folder_captions(folder, files, &CaptionSource::default())?.captions;
    let items = files
        .iter()
        .zip(captions)
        .enumerate()
        .map(|(i, (file, caption))| Item {
            file: file.clone(),
            key: sample_key(i, file.strip_prefix(folder).unwrap_or(file)),
            label: class_of(folder, file).and_then(|c| class_names.iter().position(|n| *n == c)),
            caption,
        })
        .collect();
    Ok((items, class_names))
}

/// A webdataset key: no dots (they separate key from extension) and no slashes. The position
/// prefix keeps keys unique when two paths differ only in such characters (`a.b.png`, `a_b.png`)
/// or in their extension (`a.png`, `a.jpg`).
pub fn sample_key(position: usize, relative: &Path) -> String {
    let stem = relative.with_extension("");
    let safe: String = stem.to_string_lossy().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    format!("{position:06}_{safe}")
}

/// Writes one shard; returns how many images it holds (unreadable files are skipped).
fn write_one_shard(path: &Path, items: &[Item], skipped: &mut Vec<String>) -> Result<usize, DataError> {
    let mut written = 0;
    difforge_core::write_atomic_with(path, |file: &mut File| {
        let mut tar = tar::Builder::new(BufWriter::new(file));
        for item in items {
            let bytes = match std::fs::read(&item.file) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("skipping {}: {e}", item.file.display());
                    skipped.push(format!("{}: {e}", item.file.display()));
                    continue;
                }
            };
            append_sample(&mut tar, item, &bytes)?;
            written += 1;
        }
        tar.into_inner()?.flush()
    })
    .map_err(|e| DataError::io(path, e))?;
    Ok(written)
}

/// The image, then its `.cls` and `.txt` entries: a sample's entries must be consecutive.
fn append_sample<W: Write>(tar: &mut tar::Builder<W>, item: &Item, image: &[u8]) -> io::Result<()> {
    let ext = item.file.extension().map_or("png".to_string(), |e| e.to_string_lossy().to_ascii_lowercase());
    append(tar, &format!("{}.{ext}", item.key), image)?;
    if let Some(label) = item.label {
        append(tar, &format!("{}.cls", item.key), label.to_string().as_bytes())?;
    }
    if let Some(caption) = &item.caption {
        append(tar, &format!("{}.txt", item.key), caption.as_bytes())?;
    }
    Ok(())
}

/// A regular file entry with fixed metadata, so the same folder gives byte-identical shards.
fn append<W: Write>(tar: &mut tar::Builder<W>, name: &str, data: &[u8]) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    tar.append_data(&mut header, name, data)
}

fn describe(skipped: &[SkippedFile]) -> Vec<String> {
    skipped.iter().map(|s| format!("{}: {}", s.path.display(), s.reason)).collect()
}
