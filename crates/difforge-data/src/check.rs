//! Data checks (`difforge data check`): what is in a folder of images and what is wrong with it.
//! Unreadable files, exact duplicates (content hash), near-duplicates (perceptual hash),
//! images smaller than the model, colour modes, sizes and aspect ratios, class balance,
//! caption coverage and pixel outliers (near-constant, mostly transparent).

use crate::source::folder::{class_of, decode, list_images};
use crate::DataError;
use difforge_core::sha256_hex;
use image::{DynamicImage, GenericImageView};
use image_hasher::{HashAlg, HasherConfig};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// The model's image side: smaller images are reported.
    pub model_size: u32,
    /// Largest/smallest class count above which imbalance is warned about.
    pub imbalance_threshold: f64,
    /// Perceptual-hash Hamming distance (of 64 bits) at or below which two images are
    /// near-duplicates. At most 3 (the search uses 4-way pigeonhole buckets).
    pub near_duplicate_distance: u32,
    /// Candidates are confirmed when their 16x16 grey thumbnails differ by at most this mean
    /// absolute difference (of 255): the hash alone confuses small, simple images.
    pub near_duplicate_max_difference: f64,
    pub max_pixels: u64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions { model_size: 32, imbalance_threshold: 3.0, near_duplicate_distance: 2, near_duplicate_max_difference: 6.0, max_pixels: 64 * 1024 * 1024 }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Problem {
    pub path: PathBuf,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NearDuplicate {
    pub a: PathBuf,
    pub b: PathBuf,
    /// Perceptual-hash distance in bits.
    pub distance: u32,
    /// Mean absolute difference of the 16x16 grey thumbnails, of 255.
    pub difference: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DataReport {
    pub root: PathBuf,
    pub files_found: usize,
    pub usable: usize,
    pub unreadable: Vec<Problem>,
    /// Groups of files with identical bytes (first one is kept by the fix report).
    pub exact_duplicates: Vec<Vec<PathBuf>>,
    pub near_duplicates: Vec<NearDuplicate>,
    pub smaller_than_model: Vec<Problem>,
    pub color_modes: BTreeMap<String, usize>,
    /// Shorter side, bucketed by powers of two ("<=16", "17-32", ...).
    pub size_histogram: BTreeMap<String, usize>,
    /// Width / height, bucketed.
    pub aspect_histogram: BTreeMap<String, usize>,
    pub class_counts: BTreeMap<String, usize>,
    /// Largest class count over smallest (1 for one class; absent without classes).
    pub imbalance_ratio: Option<f64>,
    /// Share of usable images with a caption file (absent when no caption exists).
    pub caption_coverage: Option<f64>,
    pub outliers: Vec<Problem>,
    pub warnings: Vec<String>,
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
    caption: bool,
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

fn outlier(img: &DynamicImage) -> Option<String> {
    if img.color().has_alpha() {
        let rgba = img.to_rgba8();
        let transparent = rgba.pixels().filter(|p| p.0[3] < 10).count();
        if transparent as f64 > 0.95 * rgba.pixels().len() as f64 {
            return Some(format!("mostly transparent ({:.0}% of pixels)", 100.0 * transparent as f64 / rgba.pixels().len() as f64));
        }
    }
    let grey = img.to_luma8();
    let n = grey.pixels().len().max(1) as f64;
    let mean = grey.pixels().map(|p| f64::from(p.0[0])).sum::<f64>() / n;
    let sd = (grey.pixels().map(|p| (f64::from(p.0[0]) - mean).powi(2)).sum::<f64>() / n).sqrt();
    (sd < 2.0).then(|| format!("near-constant (pixel standard deviation {sd:.2} of 255)"))
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

fn inspect(path: &Path, max_pixels: u64) -> Result<FileFacts, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let img = decode(path, max_pixels)?;
    let (width, height) = img.dimensions();
    Ok(FileFacts {
        path: path.to_path_buf(),
        sha256: sha256_hex(&bytes),
        dhash: dhash(&img),
        thumb: thumbnail(&img),
        width,
        height,
        mode: color_mode(&bytes, &img),
        outlier: outlier(&img),
        caption: path.with_extension("txt").is_file(),
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
/// 16-bit chunks (pigeonhole: two hashes within 3 bits agree on at least one chunk).
pub fn near_pairs(hashes: &[u64], max_distance: u32) -> Vec<(usize, usize, u32)> {
    let mut buckets: HashMap<(u8, u16), Vec<usize>> = HashMap::new();
    for (i, &h) in hashes.iter().enumerate() {
        for chunk in 0..4u8 {
            buckets.entry((chunk, (h >> (16 * chunk)) as u16)).or_default().push(i);
        }
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for members in buckets.values() {
        for (x, &i) in members.iter().enumerate() {
            for &j in &members[x + 1..] {
                let d = (hashes[i] ^ hashes[j]).count_ones();
                if d <= max_distance && seen.insert((i.min(j), i.max(j))) {
                    out.push((i.min(j), i.max(j), d));
                }
            }
        }
    }
    out.sort_unstable();
    out
}

pub fn check_folder(root: &Path, opts: &CheckOptions) -> Result<DataReport, DataError> {
    if !root.is_dir() {
        return Err(difforge_core::ConfigError::new("FOLDER", root.display(), "an existing folder of images").into());
    }
    let files = list_images(root)?;
    let results: Vec<Result<FileFacts, String>> = files.par_iter().map(|f| inspect(f, opts.max_pixels)).collect();
    let mut facts = Vec::new();
    let mut unreadable = Vec::new();
    for (path, r) in files.iter().zip(results) {
        match r {
            Ok(f) => facts.push(f),
            Err(reason) => unreadable.push(Problem { path: path.clone(), reason }),
        }
    }

    let mut by_hash: BTreeMap<&str, Vec<PathBuf>> = BTreeMap::new();
    for f in &facts {
        by_hash.entry(&f.sha256).or_default().push(f.path.clone());
    }
    let mut exact_duplicates: Vec<Vec<PathBuf>> = by_hash.into_values().filter(|g| g.len() > 1).collect();
    exact_duplicates.sort();
    let hashes: Vec<u64> = facts.iter().map(|f| f.dhash).collect();
    let near_duplicates = near_pairs(&hashes, opts.near_duplicate_distance.min(3))
        .into_iter()
        .filter(|&(i, j, _)| facts[i].sha256 != facts[j].sha256)
        .map(|(i, j, d)| NearDuplicate {
            a: facts[i].path.clone(),
            b: facts[j].path.clone(),
            distance: d,
            difference: mean_abs_difference(&facts[i].thumb, &facts[j].thumb),
        })
        .filter(|n| n.difference <= opts.near_duplicate_max_difference)
        .collect();

    let mut report = DataReport {
        root: root.to_path_buf(),
        files_found: files.len(),
        usable: facts.len(),
        unreadable,
        exact_duplicates,
        near_duplicates,
        smaller_than_model: Vec::new(),
        color_modes: BTreeMap::new(),
        size_histogram: BTreeMap::new(),
        aspect_histogram: BTreeMap::new(),
        class_counts: BTreeMap::new(),
        imbalance_ratio: None,
        caption_coverage: None,
        outliers: Vec::new(),
        warnings: Vec::new(),
    };
    let mut captions = 0;
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
                .push(Problem { path: f.path.clone(), reason: format!("{}x{} is smaller than the model size {}", f.width, f.height, opts.model_size) });
        }
        if let Some(reason) = &f.outlier {
            report.outliers.push(Problem { path: f.path.clone(), reason: reason.clone() });
        }
        captions += usize::from(f.caption);
    }
    if captions > 0 {
        report.caption_coverage = Some(captions as f64 / facts.len().max(1) as f64);
    }
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
    let counts = [
        (r.unreadable.len(), "unreadable or corrupt file(s)"),
        (r.exact_duplicates.iter().map(|g| g.len() - 1).sum(), "exact duplicate file(s)"),
        (r.near_duplicates.len(), "near-duplicate pair(s)"),
        (r.smaller_than_model.len(), "image(s) smaller than the model size"),
        (r.outliers.len(), "outlier image(s)"),
    ];
    for (n, what) in counts {
        if n > 0 {
            r.warnings.push(format!("{n} {what}"));
        }
    }
}

/// Files a user may want to remove or review, as `--fix-report` writes them.
#[derive(Debug, Serialize)]
pub struct FixReport {
    pub remove: Vec<Problem>,
    pub review: Vec<NearDuplicate>,
}

pub fn fix_report(r: &DataReport) -> FixReport {
    let mut remove: Vec<Problem> = r.unreadable.iter().map(|p| Problem { path: p.path.clone(), reason: format!("unreadable: {}", p.reason) }).collect();
    for group in &r.exact_duplicates {
        for dup in &group[1..] {
            remove.push(Problem { path: dup.clone(), reason: format!("exact duplicate of {}", group[0].display()) });
        }
    }
    remove.extend(r.outliers.iter().cloned());
    FixReport { remove, review: r.near_duplicates.clone() }
}

/// The checks that apply to any loaded set (embedded digits, IDX): class balance and exact
/// duplicates by pixel content.
pub fn check_set(set: &crate::ImageSet, opts: &CheckOptions) -> Vec<String> {
    let mut report = DataReport {
        root: PathBuf::new(),
        files_found: set.len(),
        usable: set.len(),
        unreadable: Vec::new(),
        exact_duplicates: Vec::new(),
        near_duplicates: Vec::new(),
        smaller_than_model: Vec::new(),
        color_modes: BTreeMap::new(),
        size_histogram: BTreeMap::new(),
        aspect_histogram: BTreeMap::new(),
        class_counts: set.class_counts(),
        imbalance_ratio: None,
        caption_coverage: None,
        outliers: Vec::new(),
        warnings: Vec::new(),
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, px) in set.pixels.iter().enumerate() {
        let h = sha256_hex(&px.data);
        if let Some(&first) = seen.get(&h) {
            report.exact_duplicates.push(vec![PathBuf::from(&set.ids[first]), PathBuf::from(&set.ids[i])]);
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
        assert!(r.near_duplicates[0].a.ends_with("a.png") && r.near_duplicates[0].b.ends_with("b.jpg"));
        assert_eq!(r.exact_duplicates.len(), 0);
        assert_eq!(r.color_modes.get("rgb"), Some(&3));
    }

    #[test]
    fn outliers_near_constant_and_transparent() {
        let dir = tempfile::tempdir().unwrap();
        image::GrayImage::from_pixel(32, 32, image::Luma([128])).save(dir.path().join("flat.png")).unwrap();
        image::RgbaImage::from_pixel(32, 32, image::Rgba([255, 0, 0, 0])).save(dir.path().join("clear.png")).unwrap();
        let r = check_folder(dir.path(), &CheckOptions::default()).unwrap();
        let reasons: Vec<&str> = r.outliers.iter().map(|o| o.reason.as_str()).collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons.iter().any(|r| r.starts_with("mostly transparent")) && reasons.iter().any(|r| r.starts_with("near-constant")));
    }

    #[test]
    fn buckets_name_ranges() {
        assert_eq!(size_bucket(16), "<=16");
        assert_eq!(size_bucket(20), "17-32");
        assert_eq!(size_bucket(64), "33-64");
        assert_eq!(aspect_bucket(100, 100), "0.9-1.1 (square)");
    }
}
