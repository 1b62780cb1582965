//! An image folder: searched recursively for png, jpg, jpeg, webp and bmp files; the class of an
//! image is the name of the first-level subfolder it lies under; its caption comes from a
//! metadata.jsonl/metadata.csv at the root or a same-named sidecar file (.txt by default; see
//! [`super::metadata`]). Unreadable files and folders are skipped, named and counted;
//! symbolic links to folders are not followed (a link back to a parent would loop forever).

use crate::bucket::{BucketReport, DropReason, Dropped, Fit};
use crate::error::DataError;
use crate::image_set::{ImageSet, SkippedFile};
use crate::mask::MaskSource;
use crate::pixels::Pixels;
use crate::preprocess::Preprocess;
use crate::source::metadata::{folder_captions, CaptionSource};
use difforge_core::ConfigError;
use image::ImageReader;
use rayon::prelude::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Skipped files named in the log before only their count is given.
const SHOWN_SKIPS: usize = 5;

pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "bmp"];

pub fn is_image_file(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// What a folder search found: the image files, sorted by path so that every run sees the same
/// order, and the folders (or links to folders) it did not enter, with the reason.
#[derive(Debug, Default)]
pub struct Listing {
    pub files: Vec<PathBuf>,
    pub skipped: Vec<SkippedFile>,
}

/// Image files under `root`. Only `root` itself must be readable: an unreadable subfolder is
/// skipped and reported, and so is a symbolic link to a folder.
pub fn list_images(root: &Path) -> Result<Listing, DataError> {
    let mut out = Listing::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if dir == root => return Err(DataError::io(&dir, e)),
            Err(e) => {
                out.skipped.push(SkippedFile { path: dir.clone(), reason: format!("folder not readable: {e}") });
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    out.skipped.push(SkippedFile { path: dir.clone(), reason: format!("folder listing failed: {e}") });
                    continue;
                }
            };
            let path = entry.path();
            let kind = entry.file_type().map_err(|e| DataError::io(&path, e))?;
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_symlink() && path.is_dir() {
                out.skipped.push(SkippedFile { path, reason: "symbolic link to a folder: not followed".into() });
            } else if is_image_file(&path) {
                out.files.push(path);
            }
        }
    }
    out.files.sort();
    out.skipped.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The class of a file: its first-level subfolder under `root`, if any.
pub fn class_of(root: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(root).ok()?;
    let mut parts = rel.components();
    let first = parts.next()?;
    parts.next().map(|_| first.as_os_str().to_string_lossy().into_owned())
}

/// Why a file could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Its header declares more pixels than the limit: refused before anything is decoded.
    TooLarge {
        width: u32,
        height: u32,
        limit: u64,
    },
    Unreadable(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::TooLarge { width, height, limit } => {
                write!(f, "too large ({width} x {height}, limit {limit} pixels): raise data.max_pixels (or --max-pixels) to use it")
            }
            DecodeError::Unreadable(reason) => f.write_str(reason),
        }
    }
}

/// Decodes one file, refusing huge declared dimensions before any pixel is allocated.
pub fn decode(path: &Path, max_pixels: u64) -> Result<image::DynamicImage, DecodeError> {
    decode_with(|| ImageReader::open(path).and_then(|r| r.with_guessed_format()), max_pixels)
}

/// Decodes an image held in memory (a webdataset entry) exactly as [`decode`] does a file:
/// the format from `extension`, overridden by the content when it is recognisable.
pub fn decode_bytes(bytes: &[u8], extension: &str, max_pixels: u64) -> Result<image::DynamicImage, DecodeError> {
    decode_with(
        || {
            let mut reader = ImageReader::new(std::io::Cursor::new(bytes));
            if let Some(format) = image::ImageFormat::from_extension(extension) {
                reader.set_format(format);
            }
            reader.with_guessed_format()
        },
        max_pixels,
    )
}

/// Reads the declared dimensions, refuses huge ones, then decodes from a second reader.
fn decode_with<R: std::io::BufRead + std::io::Seek>(
    open: impl Fn() -> std::io::Result<ImageReader<R>>,
    max_pixels: u64,
) -> Result<image::DynamicImage, DecodeError> {
    let unreadable = |e: &dyn std::fmt::Display| DecodeError::Unreadable(e.to_string());
    let open = || open().map_err(|e| unreadable(&e));
    let (width, height) = open()?.into_dimensions().map_err(|e| unreadable(&e))?;
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(DecodeError::TooLarge { width, height, limit: max_pixels });
    }
    let mut reader = open()?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(16));
    reader.limits(limits);
    reader.decode().map_err(|e| unreadable(&e))
}

/// One file decoded and preprocessed, with its mask when masks are on (an image without a mask
/// file gets a full one, so that every image has the same channels); true when it had none.
fn prepare_file(root: &Path, file: &Path, prep: &Preprocess, max_pixels: u64, masks: Option<&MaskSource>) -> Result<(Prepared, bool), DecodeError> {
    let img = decode(file, max_pixels)?;
    let Some(source) = masks else { return Ok((prep.prepare(&img, None), false)) };
    let mask = source.mask_of(root, file, &img, max_pixels)?;
    let missing = mask.is_none();
    let mask = mask.unwrap_or_else(|| image::GrayImage::from_pixel(img.width(), img.height(), image::Luma([255])));
    Ok((prep.prepare(&img, Some(&mask)), missing))
}

/// A decoded image's pixels (and bucket), or why it has no bucket.
type Prepared = Result<(Pixels, Option<Fit>), DropReason>;

/// Loads a folder. With `known_classes` (data.class_names) the subfolders are labelled by their
/// position in that list (a fine-tune keeps its base's labels); otherwise by sorted name.
/// Captions as [`folder_captions`] finds them.
pub fn load_folder(
    root: &Path,
    prep: &Preprocess,
    max_pixels: u64,
    known_classes: &[String],
    captions: &CaptionSource,
    masks: Option<&MaskSource>,
) -> Result<ImageSet, DataError> {
    if !root.is_dir() {
        return Err(ConfigError::new("data.path", root.display(), "an existing folder of images").into());
    }
    let Listing { files, skipped: skipped_folders } = list_images(root)?;
    let skipped_count = skipped_folders.len();
    let classes: BTreeSet<String> = files.iter().filter_map(|f| class_of(root, f)).collect();
    let class_names: Vec<String> = if known_classes.is_empty() {
        classes.into_iter().collect()
    } else {
        if let Some(unknown) = classes.iter().find(|c| !known_classes.contains(c)) {
            return Err(ConfigError::new(
                "data.class_names",
                format!("{known_classes:?}"),
                format!("every subfolder of {} among them (`{unknown}` is not)", root.display()),
            )
            .into());
        }
        known_classes.to_vec()
    };
    let found = folder_captions(root, &files, captions)?;
    if let (Some(file), n @ 1..) = (&found.metadata, found.sidecars_ignored) {
        tracing::info!("{}: the captions of {} win over {n} {} sidecar file(s), which are ignored", root.display(), file.display(), captions.extension);
    }
    let decoded: Vec<Result<(Prepared, bool), DecodeError>> = files.par_iter().map(|f| prepare_file(root, f, prep, max_pixels, masks)).collect();

    let mut set = ImageSet { class_names, skipped: skipped_folders, masked: masks.is_some(), ..Default::default() };
    let mut placed = Vec::new();
    let mut unmasked = 0;
    for ((file, result), caption) in files.iter().zip(decoded).zip(found.captions) {
        let id = file.strip_prefix(root).unwrap_or(file).to_string_lossy().into_owned();
        match result.map(|(prepared, without_mask)| {
            unmasked += usize::from(without_mask);
            prepared
        }) {
            Ok(Ok((px, fit))) => {
                let label = class_of(root, file).and_then(|c| set.class_names.iter().position(|n| *n == c));
                if let Some(fit) = fit {
                    set.fits.push(fit);
                    placed.push((id.clone(), Ok(fit)));
                }
                set.push(px, label, caption, id);
            }
            // Not a broken file: the bucket report lists it with the reason.
            Ok(Err(reason)) => placed.push((id, Err(reason))),
            Err(reason) => set.skipped.push(SkippedFile { path: file.clone(), reason: reason.to_string() }),
        }
    }
    if let Some(cfg) = &prep.buckets {
        set.bucket_report = Some(BucketReport::of_fits(cfg, &placed));
    }
    if let (Some(MaskSource::Folder(dir)), 1..) = (masks, unmasked) {
        tracing::info!("{unmasked} image(s) of {} have no mask in {}: they count everywhere in the loss", root.display(), dir.display());
    }
    if let (true, Some(Dropped { id, message, .. })) = (set.is_empty(), set.bucket_report.as_ref().and_then(|r| r.dropped.first())) {
        return Err(
            ConfigError::new("data.buckets", root.display(), format!("settings that place some image (every one was dropped, e.g. {id}: {message})")).into()
        );
    }
    if set.is_empty() {
        return Err(DataError::NoImages { path: root.to_path_buf(), skipped: set.skipped.len() });
    }
    // The first few by name, then the count: a folder with thousands of broken files must not
    // flood the log (`difforge data check` lists them all).
    for f in set.skipped.iter().take(SHOWN_SKIPS) {
        tracing::warn!("skipping {}: {}", f.path.display(), f.reason);
    }
    if !set.skipped.is_empty() {
        tracing::warn!("{} of {} image file(s) or folder(s) skipped", set.skipped.len(), files.len() + skipped_count);
    }
    Ok(set)
}
