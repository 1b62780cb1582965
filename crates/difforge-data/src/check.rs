//! Data checks (`difforge data check`): what is in a folder of images and what is wrong with it.
//! Unreadable and too-large files, folders not searched, exact duplicates (content hash),
//! near-duplicates (perceptual hash, confirmed on thumbnails, reported as groups), images smaller
//! than the model, colour modes, sizes and aspect ratios, class balance, near-constant images,
//! and captions (see [`CaptionReport`]: coverage, missing, empty and duplicate captions, length
//! in words, tag frequency, and with a [`TokenCounter`] the captions CLIP would cut off).
//!
//! The check looks at exactly the pixels training sees: every image goes through the trainer's
//! preprocessing first (alpha composited on white, the model's colour mode, padding, resized to
//! the model size), so a line drawing on a transparent background is a drawing here too.

use crate::config::ColorMode;
use crate::pixels::Pixels;
use crate::preprocess::Preprocess;
use crate::source::folder::{class_of, decode, list_images, DecodeError, Listing};
use crate::source::metadata::{folder_captions, CaptionSource};
use crate::DataError;
use difforge_core::sha256_hex;
use image::{DynamicImage, GenericImageView};
use image_hasher::{HashAlg, HasherConfig};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The tokens of a caption CLIP's text encoder reads: its 77 positions less the start and end
/// tokens. Training cuts longer captions off.
pub const CAPTION_TOKEN_LIMIT: usize = 75;

/// Tags listed in the report, most frequent first.
pub const TOP_TAGS: usize = 20;

/// Counts the tokens of a caption, without start and end tokens and without truncation. The data
/// crate has no tokenizer: the caller gives one (the command line gives CLIP's).
#[derive(Clone)]
pub struct TokenCounter(pub Arc<dyn Fn(&str) -> usize + Send + Sync>);

impl TokenCounter {
    pub fn new(count: impl Fn(&str) -> usize + Send + Sync + 'static) -> Self {
        TokenCounter(Arc::new(count))
    }
}

impl std::fmt::Debug for TokenCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCounter(..)")
    }
}

#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// The model's image side: smaller images are reported, and images are looked at resized to it.
    pub model_size: u32,
    /// The model's colour mode (1 grey, 3 RGB), as training converts images.
    pub channels: u32,
    /// Black border added before resizing, as training does.
    pub pad: u32,
    /// Largest/smallest class count above which imbalance is warned about.
    pub imbalance_threshold: f64,
    /// Perceptual-hash Hamming distance (of 64 bits) at or below which two images are
    /// near-duplicate candidates. At most 3 (the search uses 4-way pigeonhole buckets).
    pub near_duplicate_distance: u32,
    /// Candidates are confirmed when their 16x16 grey thumbnails differ by at most this mean
    /// absolute difference (of 255): the hash alone confuses small, simple images.
    pub near_duplicate_max_difference: f64,
    pub max_pixels: u64,
    /// Where captions are read from (data.caption_extension, data.caption_column).
    pub captions: CaptionSource,
    /// Counts caption tokens; when given, captions longer than [`CAPTION_TOKEN_LIMIT`] are listed.
    pub caption_tokens: Option<TokenCounter>,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            model_size: 32,
            channels: 3,
            pad: 0,
            imbalance_threshold: 3.0,
            near_duplicate_distance: 2,
            near_duplicate_max_difference: 6.0,
            max_pixels: 64 * 1024 * 1024,
            captions: CaptionSource::default(),
            caption_tokens: None,
        }
    }
}

/// Paths are shown as text (lossily for names that are not UTF-8), so that any folder can be
/// reported as JSON.
pub type ShownPath = String;

fn shown(p: &Path) -> ShownPath {
    p.to_string_lossy().into_owned()
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Problem {
    pub path: ShownPath,
    pub reason: String,
}

/// Images that look alike after preprocessing (a connected group of confirmed pairs), not
/// byte-identical to each other.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NearDuplicateGroup {
    pub members: Vec<ShownPath>,
    /// The largest perceptual-hash distance (bits) of a confirmed pair in the group.
    pub max_distance: u32,
    /// The largest mean absolute thumbnail difference (of 255) of a confirmed pair.
    pub max_difference: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DataReport {
    pub root: ShownPath,
    pub files_found: usize,
    pub usable: usize,
    pub unreadable: Vec<Problem>,
    /// Files whose header declares more pixels than data.max_pixels (not decoded).
    pub too_large: Vec<Problem>,
    /// Folders not searched: unreadable ones and symbolic links to folders.
    pub skipped_folders: Vec<Problem>,
    /// Groups of files with identical bytes (the first one is kept by the fix report).
    pub exact_duplicates: Vec<Vec<ShownPath>>,
    pub near_duplicates: Vec<NearDuplicateGroup>,
    pub smaller_than_model: Vec<Problem>,
    pub color_modes: BTreeMap<String, usize>,
    /// Shorter side, bucketed by powers of two ("<=16", "17-32", ...).
    pub size_histogram: BTreeMap<String, usize>,
    /// Width / height, bucketed.
    pub aspect_histogram: BTreeMap<String, usize>,
    pub class_counts: BTreeMap<String, usize>,
    /// Largest class count over smallest (1 for one class; absent without classes).
    pub imbalance_ratio: Option<f64>,
    /// Share of usable images with a caption (absent when no caption exists).
    pub caption_coverage: Option<f64>,
    /// What the captions hold (absent when no caption exists).
    pub captions: Option<CaptionReport>,
    pub outliers: Vec<Problem>,
    /// One line per kind of problem, with counts.
    pub warnings: Vec<String>,
}

/// Images that share one caption.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DuplicateCaption {
    pub caption: String,
    pub members: Vec<ShownPath>,
}

/// Words (whitespace-separated) per non-empty caption.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WordStats {
    pub min: usize,
    pub median: usize,
    pub mean: f64,
    pub max: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TagCount {
    pub tag: String,
    /// Captions holding the tag.
    pub count: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LongCaption {
    pub path: ShownPath,
    /// Tokens without the start and end tokens.
    pub tokens: usize,
}

/// The captions of the usable images.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CaptionReport {
    /// Where they come from: "metadata.jsonl", "metadata.csv", or the sidecar files (".txt files").
    pub source: String,
    /// Usable images with a caption (empty ones included).
    pub captioned: usize,
    /// Sidecar files not read because the metadata file captions their image.
    pub sidecars_ignored: usize,
    /// Usable images without a caption.
    pub missing: Vec<ShownPath>,
    /// Captions that are empty or only whitespace.
    pub empty: Vec<ShownPath>,
    /// Groups of images with the same (non-empty) caption, largest first.
    pub duplicates: Vec<DuplicateCaption>,
    pub words: Option<WordStats>,
    /// Distinct comma-separated tags, counted when the captions look like tag lists (most hold
    /// commas and the pieces are short); 0 otherwise.
    pub distinct_tags: usize,
    /// The [`TOP_TAGS`] most frequent tags, with the number of captions holding each.
    pub top_tags: Vec<TagCount>,
    /// Whether tokens were counted (a [`TokenCounter`] was given).
    pub tokens_counted: bool,
    /// [`CAPTION_TOKEN_LIMIT`].
    pub token_limit: usize,
    /// Captions longer than `token_limit` tokens, longest first.
    pub over_token_limit: Vec<LongCaption>,
}

/// Comma-separated tags, trimmed, each once.
fn tags(caption: &str) -> Vec<&str> {
    let mut seen = HashSet::new();
    caption.split(',').map(str::trim).filter(|t| !t.is_empty() && seen.insert(*t)).collect()
}

/// The caption report of `items` (path and caption of each usable image); `None` when no image
/// has a caption.
pub fn caption_report(items: &[(ShownPath, Option<&str>)], source: &str, sidecars_ignored: usize, opts: &CheckOptions) -> Option<CaptionReport> {
    let captioned: Vec<(&ShownPath, &str)> = items.iter().filter_map(|(p, c)| c.map(|c| (p, c))).collect();
    if captioned.is_empty() {
        return None;
    }
    let missing = items.iter().filter(|(_, c)| c.is_none()).map(|(p, _)| p.clone()).collect();
    let empty = captioned.iter().filter(|(_, c)| c.trim().is_empty()).map(|(p, _)| (*p).clone()).collect();
    let texts: Vec<(&ShownPath, &str)> = captioned.iter().map(|&(p, c)| (p, c.trim())).filter(|(_, c)| !c.is_empty()).collect();

    let mut by_caption: BTreeMap<&str, Vec<ShownPath>> = BTreeMap::new();
    for &(p, c) in &texts {
        by_caption.entry(c).or_default().push(p.clone());
    }
    let mut duplicates: Vec<DuplicateCaption> =
        by_caption.into_iter().filter(|(_, m)| m.len() > 1).map(|(c, members)| DuplicateCaption { caption: c.to_string(), members }).collect();
    duplicates.sort_by(|a, b| b.members.len().cmp(&a.members.len()).then_with(|| a.caption.cmp(&b.caption)));

    let mut words: Vec<usize> = texts.iter().map(|(_, c)| c.split_whitespace().count()).collect();
    words.sort_unstable();
    let word_stats = (!words.is_empty()).then(|| WordStats {
        min: words[0],
        median: words[words.len() / 2],
        mean: words.iter().sum::<usize>() as f64 / words.len() as f64,
        max: words[words.len() - 1],
    });

    // Tag lists: most captions hold commas, and the pieces are a few words each.
    let with_commas = texts.iter().filter(|(_, c)| c.contains(',')).count();
    let pieces: usize = texts.iter().map(|(_, c)| c.split(',').filter(|t| !t.trim().is_empty()).count()).sum();
    let is_tagged = with_commas * 2 >= texts.len() && with_commas > 0 && words.iter().sum::<usize>() <= 4 * pieces;
    let mut tag_counts: HashMap<&str, usize> = HashMap::new();
    if is_tagged {
        for (_, c) in &texts {
            for t in tags(c) {
                *tag_counts.entry(t).or_insert(0) += 1;
            }
        }
    }
    let mut top_tags: Vec<TagCount> = tag_counts.iter().map(|(t, &count)| TagCount { tag: t.to_string(), count }).collect();
    top_tags.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.tag.cmp(&b.tag)));
    top_tags.truncate(TOP_TAGS);

    let mut over_token_limit: Vec<LongCaption> = match &opts.caption_tokens {
        Some(count) => {
            texts.par_iter().map(|&(p, c)| LongCaption { path: p.clone(), tokens: (count.0)(c) }).filter(|l| l.tokens > CAPTION_TOKEN_LIMIT).collect()
        }
        None => Vec::new(),
    };
    over_token_limit.sort_by(|a, b| b.tokens.cmp(&a.tokens).then_with(|| a.path.cmp(&b.path)));

    Some(CaptionReport {
        source: source.to_string(),
        captioned: captioned.len(),
        sidecars_ignored,
        missing,
        empty,
        duplicates,
        words: word_stats,
        distinct_tags: tag_counts.len(),
        top_tags,
        tokens_counted: opts.caption_tokens.is_some(),
        token_limit: CAPTION_TOKEN_LIMIT,
        over_token_limit,
    })
}

/// What one readable file contributes.
struct FileFacts {
    path: PathBuf,
    sha256: String,
    dhash: u64,
    thumb: Vec<u8>,
    width: u32,
    height: u32,
    mode: String,
    outlier: Option<String>,
    caption: Option<String>,
}

fn color_mode(bytes: &[u8], img: &DynamicImage) -> String {
    // PNG colour type 3 is a palette; the decoder expands it, so read the header.
    if bytes.len() > 25 && bytes.starts_with(b"\x89PNG") && bytes[25] == 3 {
        return "palette".into();
    }
    let c = img.color();
    match (c.has_color(), c.has_alpha()) {
        (false, false) => "grey",
        (false, true) => "grey+alpha",
        (true, false) => "rgb",
        (true, true) => "rgba",
    }
    .into()
}

/// The share of fully or almost transparent pixels (0 without alpha).
fn transparent_share(img: &DynamicImage) -> f64 {
    if !img.color().has_alpha() {
        return 0.0;
    }
    let rgba = img.to_rgba8();
    rgba.pixels().filter(|p| p.0[3] < 10).count() as f64 / rgba.pixels().len().max(1) as f64
}

/// Near-constant images as training sees them (after compositing): nothing to learn from.
fn outlier(px: &Pixels, transparent: f64) -> Option<String> {
    let n = px.data.len().max(1) as f64;
    let mean = px.data.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let sd = (px.data.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n).sqrt();
    if sd >= 2.0 {
        return None;
    }
    let why = if transparent > 0.95 { format!(", {:.0}% of its pixels transparent", 100.0 * transparent) } else { String::new() };
    Some(format!("near-constant after preprocessing (pixel standard deviation {sd:.2} of 255{why})"))
}

/// The preprocessed pixels as an image, for hashing.
fn as_image(px: &Pixels) -> Option<DynamicImage> {
    match px.channels {
        1 => image::GrayImage::from_raw(px.width, px.height, px.data.clone()).map(DynamicImage::ImageLuma8),
        _ => image::RgbImage::from_raw(px.width, px.height, px.data.clone()).map(DynamicImage::ImageRgb8),
    }
}

fn dhash(img: &DynamicImage) -> u64 {
    let hasher = HasherConfig::new().hash_alg(HashAlg::Gradient).hash_size(8, 8).to_hasher();
    let bytes = hasher.hash_image(img).as_bytes().to_vec();
    bytes.iter().take(8).fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

fn thumbnail(img: &DynamicImage) -> Vec<u8> {
    image::imageops::resize(&img.to_luma8(), 16, 16, image::imageops::FilterType::Triangle).into_raw()
}

fn mean_abs_difference(a: &[u8], b: &[u8]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(x.abs_diff(*y))).sum::<f64>() / a.len().max(1) as f64
}

fn inspect(path: &Path, opts: &CheckOptions) -> Result<FileFacts, DecodeError> {
    let bytes = std::fs::read(path).map_err(|e| DecodeError::Unreadable(e.to_string()))?;
    let img = decode(path, opts.max_pixels)?;
    let (width, height) = img.dimensions();
    let color = if opts.channels == 1 { ColorMode::Grey } else { ColorMode::Rgb };
    let seen = Preprocess { size: opts.model_size, color, pad: opts.pad, buckets: None }.apply(&img);
    let seen_img = as_image(&seen).ok_or_else(|| DecodeError::Unreadable("preprocessing gave a malformed image".into()))?;
    Ok(FileFacts {
        path: path.to_path_buf(),
        sha256: sha256_hex(&bytes),
        dhash: dhash(&seen_img),
        thumb: thumbnail(&seen_img),
        width,
        height,
        mode: color_mode(&bytes, &img),
        outlier: outlier(&seen, transparent_share(&img)),
        caption: None,
    })
}

fn size_bucket(side: u32) -> String {
    let mut hi = 16u32;
    while side > hi && hi < 4096 {
        hi *= 2;
    }
    if side > hi {
        ">4096".into()
    } else if hi == 16 {
        "<=16".into()
    } else {
        format!("{}-{hi}", hi / 2 + 1)
    }
}

fn aspect_bucket(w: u32, h: u32) -> String {
    let r = f64::from(w) / f64::from(h.max(1));
    match r {
        r if r < 0.5 => "<0.5 (tall)",
        r if r < 0.9 => "0.5-0.9",
        r if r <= 1.1 => "0.9-1.1 (square)",
        r if r <= 2.0 => "1.1-2.0",
        _ => ">2.0 (wide)",
    }
    .into()
}

/// Pairs of hashes within `max_distance` bits, found through exact matches of one of four
/// 16-bit chunks (pigeonhole: two hashes within 3 bits agree on at least one chunk). The hashes
/// should be distinct: equal hashes are grouped before (see [`near_duplicate_groups`]).
pub fn near_pairs(hashes: &[u64], max_distance: u32) -> Vec<(usize, usize, u32)> {
    let mut buckets: HashMap<(u8, u16), Vec<usize>> = HashMap::new();
    for (i, &h) in hashes.iter().enumerate() {
        for chunk in 0..4u8 {
            buckets.entry((chunk, (h >> (16 * chunk)) as u16)).or_default().push(i);
        }
    }
    let mut out = Vec::new();
    for members in buckets.values() {
        for (x, &i) in members.iter().enumerate() {
            for &j in &members[x + 1..] {
                let d = (hashes[i] ^ hashes[j]).count_ones();
                if d <= max_distance {
                    out.push((i.min(j), i.max(j), d));
                }
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Union-find over image indices.
struct Groups(Vec<usize>);

impl Groups {
    fn find(&mut self, i: usize) -> usize {
        let mut r = i;
        while self.0[r] != r {
            r = self.0[r];
        }
        let mut i = i;
        while self.0[i] != r {
            let next = self.0[i];
            self.0[i] = r;
            i = next;
        }
        r
    }

    fn join(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.0[ra.max(rb)] = ra.min(rb);
        }
    }
}

/// Near-duplicate groups among `facts`: images are linked when their hashes are within the
/// distance and their thumbnails within the difference, and each connected group is reported
/// once. Byte-identical files count as one image (they are exact duplicates). Images with equal
/// hashes are compared with one representative, so the work stays linear when thousands look
/// the same.
fn near_duplicate_groups(facts: &[FileFacts], opts: &CheckOptions) -> Vec<NearDuplicateGroup> {
    // One image per distinct content.
    let mut by_content: HashMap<&str, usize> = HashMap::new();
    let unique: Vec<usize> = (0..facts.len()).filter(|&i| by_content.insert(&facts[i].sha256, i).is_none()).collect();
    let mut groups = Groups((0..facts.len()).collect());
    let mut links: Vec<(usize, usize, u32, f64)> = Vec::new();
    let mut link = |groups: &mut Groups, a: usize, b: usize, d: u32| {
        let diff = mean_abs_difference(&facts[a].thumb, &facts[b].thumb);
        if diff <= opts.near_duplicate_max_difference {
            groups.join(a, b);
            links.push((a, b, d, diff));
        }
    };
    // Equal hashes: each against the first with that hash.
    let mut by_hash: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for &i in &unique {
        by_hash.entry(facts[i].dhash).or_default().push(i);
    }
    for members in by_hash.values() {
        for &m in &members[1..] {
            link(&mut groups, members[0], m, 0);
        }
    }
    // Close hashes: their representatives.
    let reps: Vec<usize> = by_hash.values().map(|m| m[0]).collect();
    let hashes: Vec<u64> = reps.iter().map(|&i| facts[i].dhash).collect();
    for (a, b, d) in near_pairs(&hashes, opts.near_duplicate_distance.min(3)) {
        link(&mut groups, reps[a], reps[b], d);
    }
    let mut by_root: BTreeMap<usize, NearDuplicateGroup> = BTreeMap::new();
    for &(a, _, d, diff) in &links {
        let root = groups.find(a);
        let g = by_root.entry(root).or_insert(NearDuplicateGroup { members: Vec::new(), max_distance: 0, max_difference: 0.0 });
        g.max_distance = g.max_distance.max(d);
        g.max_difference = g.max_difference.max(diff);
    }
    for &i in &unique {
        let root = groups.find(i);
        if let Some(g) = by_root.get_mut(&root) {
            g.members.push(shown(&facts[i].path));
        }
    }
    let mut out: Vec<NearDuplicateGroup> = by_root.into_values().collect();
    for g in &mut out {
        g.members.sort();
    }
    out.sort_by(|a, b| b.members.len().cmp(&a.members.len()).then_with(|| a.members.cmp(&b.members)));
    out
}

pub fn check_folder(root: &Path, opts: &CheckOptions) -> Result<DataReport, DataError> {
    if !root.is_dir() {
        return Err(difforge_core::ConfigError::new("FOLDER", root.display(), "an existing folder of images").into());
    }
    let Listing { files, skipped } = list_images(root)?;
    let found = folder_captions(root, &files, &opts.captions)?;
    let results: Vec<Result<FileFacts, DecodeError>> = files.par_iter().map(|f| inspect(f, opts)).collect();
    let mut facts = Vec::new();
    let (mut unreadable, mut too_large) = (Vec::new(), Vec::new());
    for ((path, r), caption) in files.iter().zip(results).zip(found.captions.iter()) {
        match r {
            Ok(f) => facts.push(FileFacts { caption: caption.clone(), ..f }),
            Err(e @ DecodeError::TooLarge { .. }) => too_large.push(Problem { path: shown(path), reason: e.to_string() }),
            Err(e) => unreadable.push(Problem { path: shown(path), reason: e.to_string() }),
        }
    }

    let mut by_hash: BTreeMap<&str, Vec<ShownPath>> = BTreeMap::new();
    for f in &facts {
        by_hash.entry(&f.sha256).or_default().push(shown(&f.path));
    }
    let mut exact_duplicates: Vec<Vec<ShownPath>> = by_hash.into_values().filter(|g| g.len() > 1).collect();
    exact_duplicates.sort();

    let mut report = DataReport {
        root: shown(root),
        files_found: files.len(),
        usable: facts.len(),
        unreadable,
        too_large,
        skipped_folders: skipped.iter().map(|s| Problem { path: shown(&s.path), reason: s.reason.clone() }).collect(),
        exact_duplicates,
        near_duplicates: near_duplicate_groups(&facts, opts),
        smaller_than_model: Vec::new(),
        color_modes: BTreeMap::new(),
        size_histogram: BTreeMap::new(),
        aspect_histogram: BTreeMap::new(),
        class_counts: BTreeMap::new(),
        imbalance_ratio: None,
        caption_coverage: None,
        captions: None,
        outliers: Vec::new(),
        warnings: Vec::new(),
    };
    for f in &facts {
        *report.color_modes.entry(f.mode.clone()).or_insert(0) += 1;
        *report.size_histogram.entry(size_bucket(f.width.min(f.height))).or_insert(0) += 1;
        *report.aspect_histogram.entry(aspect_bucket(f.width, f.height)).or_insert(0) += 1;
        if let Some(c) = class_of(root, &f.path) {
            *report.class_counts.entry(c).or_insert(0) += 1;
        }
        if f.width.min(f.height) < opts.model_size {
            report
                .smaller_than_model
                .push(Problem { path: shown(&f.path), reason: format!("{}x{} is smaller than the model size {}", f.width, f.height, opts.model_size) });
        }
        if let Some(reason) = &f.outlier {
            report.outliers.push(Problem { path: shown(&f.path), reason: reason.clone() });
        }
    }
    let items: Vec<(ShownPath, Option<&str>)> = facts.iter().map(|f| (shown(&f.path), f.caption.as_deref())).collect();
    report.captions = caption_report(&items, &found.source_name(&opts.captions), found.sidecars_ignored, opts);
    report.caption_coverage = report.captions.as_ref().map(|c| c.captioned as f64 / facts.len().max(1) as f64);
    summarise(&mut report, opts);
    Ok(report)
}

/// Fills the imbalance ratio and the warnings.
fn summarise(r: &mut DataReport, opts: &CheckOptions) {
    if let (Some(max), Some(min)) = (r.class_counts.values().max(), r.class_counts.values().min()) {
        let ratio = *max as f64 / (*min).max(1) as f64;
        r.imbalance_ratio = Some(ratio);
        if ratio > opts.imbalance_threshold {
            let smallest: Vec<&str> = r.class_counts.iter().filter(|(_, &c)| c == *min).map(|(k, _)| k.as_str()).collect();
            r.warnings.push(format!(
                "class imbalance: the largest class has {ratio:.1}x the images of the smallest ({} with {min}); consider data.balance = \"class\"",
                smallest.join(", ")
            ));
        }
    }
    if r.usable == 0 {
        r.warnings.push("no usable image".into());
    }
    let near_images: usize = r.near_duplicates.iter().map(|g| g.members.len()).sum();
    let counts = [
        (r.unreadable.len(), "unreadable or corrupt file(s)".to_string()),
        (r.too_large.len(), format!("file(s) too large (more than {} pixels; raise data.max_pixels or --max-pixels)", opts.max_pixels)),
        (r.skipped_folders.len(), "folder(s) not searched (unreadable, or symbolic links)".to_string()),
        (r.exact_duplicates.iter().map(|g| g.len() - 1).sum(), "exact duplicate file(s)".to_string()),
        (r.near_duplicates.len(), format!("group(s) of near-duplicates ({near_images} images)")),
        (r.smaller_than_model.len(), "image(s) smaller than the model size".to_string()),
        (r.outliers.len(), "near-constant image(s)".to_string()),
    ];
    for (n, what) in counts {
        if n > 0 {
            r.warnings.push(format!("{n} {what}"));
        }
    }
    if let Some(c) = &r.captions {
        let shared: usize = c.duplicates.iter().map(|g| g.members.len()).sum();
        let counts = [
            (c.missing.len(), "image(s) without a caption".to_string()),
            (c.empty.len(), "empty caption(s)".to_string()),
            (shared, format!("image(s) share their caption with another ({} group(s))", c.duplicates.len())),
            (c.over_token_limit.len(), format!("caption(s) longer than CLIP's {} tokens (training cuts them off)", c.token_limit)),
        ];
        for (n, what) in counts {
            if n > 0 {
                r.warnings.push(format!("{n} {what}"));
            }
        }
    }
}

/// Files a user may want to remove or review, as `--fix-report` writes them.
#[derive(Debug, Serialize)]
pub struct FixReport {
    pub remove: Vec<Problem>,
    pub review: Vec<NearDuplicateGroup>,
}

pub fn fix_report(r: &DataReport) -> FixReport {
    let mut remove: Vec<Problem> = r.unreadable.iter().map(|p| Problem { path: p.path.clone(), reason: format!("unreadable: {}", p.reason) }).collect();
    for group in &r.exact_duplicates {
        for dup in &group[1..] {
            remove.push(Problem { path: dup.clone(), reason: format!("exact duplicate of {}", group[0]) });
        }
    }
    remove.extend(r.outliers.iter().cloned());
    FixReport { remove, review: r.near_duplicates.clone() }
}

/// The checks that apply to any loaded set (embedded digits, IDX): class balance and exact
/// duplicates by pixel content.
pub fn check_set(set: &crate::ImageSet, opts: &CheckOptions) -> Vec<String> {
    let mut report = DataReport {
        root: String::new(),
        files_found: set.len(),
        usable: set.len(),
        unreadable: Vec::new(),
        too_large: Vec::new(),
        skipped_folders: Vec::new(),
        exact_duplicates: Vec::new(),
        near_duplicates: Vec::new(),
        smaller_than_model: Vec::new(),
        color_modes: BTreeMap::new(),
        size_histogram: BTreeMap::new(),
        aspect_histogram: BTreeMap::new(),
        class_counts: set.class_counts(),
        imbalance_ratio: None,
        caption_coverage: None,
        captions: None,
        outliers: Vec::new(),
        warnings: Vec::new(),
    };
    let items: Vec<(ShownPath, Option<&str>)> = set.ids.iter().cloned().zip(set.captions.iter().map(Option::as_deref)).collect();
    report.captions = caption_report(&items, "captions", 0, opts);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, px) in set.pixels.iter().enumerate() {
        let h = sha256_hex(&px.data);
        if let Some(&first) = seen.get(&h) {
            report.exact_duplicates.push(vec![set.ids[first].clone(), set.ids[i].clone()]);
        } else {
            seen.insert(h, i);
        }
    }
    summarise(&mut report, opts);
    report.warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_pairs_finds_close_hashes_only() {
        let hashes = [0u64, 0b111, u64::MAX, 0b1_0000_0000_0000_0001];
        let pairs = near_pairs(&hashes, 3);
        assert_eq!(pairs, vec![(0, 1, 3), (0, 3, 2), (1, 3, 3)]);
        assert_eq!(near_pairs(&hashes, 2), vec![(0, 3, 2)]);
    }

    #[test]
    fn a_reencoded_brightened_copy_is_a_near_duplicate_and_another_image_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let img = image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, ((x + y) * 2) as u8]));
        img.save(dir.path().join("a.png")).unwrap();
        let brighter = image::RgbImage::from_fn(64, 64, |x, y| {
            let p = img.get_pixel(x, y).0;
            image::Rgb([p[0].saturating_add(3), p[1].saturating_add(3), p[2].saturating_add(3)])
        });
        brighter.save(dir.path().join("b.jpg")).unwrap();
        let other = image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([255 - (x * 4) as u8, (y * 4) as u8, 0]));
        other.save(dir.path().join("c.png")).unwrap();
        let r = check_folder(dir.path(), &CheckOptions::default()).unwrap();
        assert_eq!(r.usable, 3);
        assert_eq!(r.near_duplicates.len(), 1, "{:?}", r.near_duplicates);
        let members = &r.near_duplicates[0].members;
        assert!(members.len() == 2 && members[0].ends_with("a.png") && members[1].ends_with("b.jpg"), "{members:?}");
        assert_eq!(r.exact_duplicates.len(), 0);
        assert_eq!(r.color_modes.get("rgb"), Some(&3));
    }

    #[test]
    fn near_constant_images_are_judged_after_compositing() {
        let dir = tempfile::tempdir().unwrap();
        image::GrayImage::from_pixel(32, 32, image::Luma([128])).save(dir.path().join("flat.png")).unwrap();
        image::RgbaImage::from_pixel(32, 32, image::Rgba([255, 0, 0, 0])).save(dir.path().join("clear.png")).unwrap();
        let r = check_folder(dir.path(), &CheckOptions::default()).unwrap();
        let reasons: Vec<&str> = r.outliers.iter().map(|o| o.reason.as_str()).collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons.iter().all(|r| r.starts_with("near-constant after preprocessing")));
        assert!(reasons.iter().any(|r| r.contains("100% of its pixels transparent")), "{reasons:?}");
    }

    /// Black everywhere, the shape only in the alpha channel: what clip art looks like.
    fn line_art(shape: impl Fn(u32, u32) -> bool) -> image::RgbaImage {
        image::RgbaImage::from_fn(64, 64, |x, y| image::Rgba([0, 0, 0, if shape(x, y) { 255 } else { 0 }]))
    }

    fn drawings() -> Vec<(&'static str, image::RgbaImage)> {
        vec![
            ("circle", line_art(|x, y| ((x as f64 - 32.0).hypot(y as f64 - 32.0) - 20.0).abs() < 2.0)),
            ("square", line_art(|x, y| (12..52).contains(&x) && (12..52).contains(&y) && !((15..49).contains(&x) && (15..49).contains(&y)))),
            ("cross", line_art(|x, y| x.abs_diff(y) < 2 || (x + y).abs_diff(63) < 2)),
            ("bars", line_art(|x, _| x % 16 < 3)),
            ("triangle", line_art(|x, y| y > 10 && y < 54 && x.abs_diff(32) * 2 < y && x.abs_diff(32) * 2 + 4 > y)),
        ]
    }

    #[test]
    fn transparent_drawings_differ_and_are_not_blank() {
        let dir = tempfile::tempdir().unwrap();
        for (name, img) in drawings() {
            img.save(dir.path().join(format!("{name}.png"))).unwrap();
        }
        for channels in [1, 3] {
            let r = check_folder(dir.path(), &CheckOptions { channels, model_size: 64, ..Default::default() }).unwrap();
            assert_eq!(r.usable, 5);
            assert!(r.near_duplicates.is_empty(), "channels {channels}: {:?}", r.near_duplicates);
            assert!(r.outliers.is_empty(), "channels {channels}: {:?}", r.outliers);
            assert_eq!(r.color_modes.get("rgba"), Some(&5));
        }
    }

    #[test]
    fn five_hundred_lookalikes_are_one_group_and_copies_are_exact_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let (_, circle) = drawings().remove(0);
        for i in 0..500u32 {
            // The same drawing, each file with its own faint speck: different bytes, same look.
            let mut img = circle.clone();
            img.put_pixel(i % 64, 60 + (i / 64) % 4, image::Rgba([0, 0, 0, 1 + (i / 256) as u8]));
            img.save(dir.path().join(format!("look-{i:03}.png"))).unwrap();
        }
        for class in ["animals", "people", "symbols"] {
            std::fs::create_dir_all(dir.path().join(class)).unwrap();
            drawings()[1].1.save(dir.path().join(class).join("square.png")).unwrap();
        }
        let r = check_folder(dir.path(), &CheckOptions { model_size: 64, ..Default::default() }).unwrap();
        assert_eq!(r.near_duplicates.len(), 1, "{:?}", r.near_duplicates.iter().map(|g| g.members.len()).collect::<Vec<_>>());
        assert_eq!(r.near_duplicates[0].members.len(), 500);
        assert_eq!(r.exact_duplicates.len(), 1);
        assert_eq!(r.exact_duplicates[0].len(), 3);
        assert!(r.exact_duplicates[0].iter().all(|p| p.ends_with("square.png")));
        assert!(r.warnings.iter().any(|w| w == "1 group(s) of near-duplicates (500 images)"), "{:?}", r.warnings);
    }

    #[test]
    fn palette_images_are_read_and_named() {
        let dir = tempfile::tempdir().unwrap();
        for (k, colour) in [[255u8, 0, 0], [0, 128, 255]].iter().enumerate() {
            let file = std::fs::File::create(dir.path().join(format!("p{k}.png"))).unwrap();
            let mut enc = png::Encoder::new(std::io::BufWriter::new(file), 16, 16);
            enc.set_color(png::ColorType::Indexed);
            enc.set_depth(png::BitDepth::Eight);
            enc.set_palette(vec![255, 255, 255, colour[0], colour[1], colour[2]]);
            enc.set_trns(vec![0u8, 255]);
            let mut w = enc.write_header().unwrap();
            let data: Vec<u8> = (0..256).map(|i| u8::from((i % 16 + i / 16) % 5 == k)).collect();
            w.write_image_data(&data).unwrap();
        }
        let r = check_folder(dir.path(), &CheckOptions { model_size: 16, ..Default::default() }).unwrap();
        assert_eq!((r.usable, r.color_modes.get("palette")), (2, Some(&2)));
        assert!(r.outliers.is_empty() && r.near_duplicates.is_empty(), "{:?} {:?}", r.outliers, r.near_duplicates);
    }

    #[test]
    fn too_large_images_are_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        image::GrayImage::from_pixel(100, 50, image::Luma([9])).save(dir.path().join("big.png")).unwrap();
        image::GrayImage::from_fn(20, 20, |x, _| image::Luma([x as u8 * 10])).save(dir.path().join("ok.png")).unwrap();
        let r = check_folder(dir.path(), &CheckOptions { max_pixels: 1000, model_size: 8, ..Default::default() }).unwrap();
        assert!(r.unreadable.is_empty(), "{:?}", r.unreadable);
        assert_eq!(r.too_large.len(), 1);
        assert!(r.too_large[0].reason.starts_with("too large (100 x 50, limit 1000 pixels)") && r.too_large[0].reason.contains("data.max_pixels"));
    }

    #[test]
    fn buckets_name_ranges() {
        assert_eq!(size_bucket(16), "<=16");
        assert_eq!(size_bucket(20), "17-32");
        assert_eq!(size_bucket(64), "33-64");
        assert_eq!(aspect_bucket(100, 100), "0.9-1.1 (square)");
    }
}
