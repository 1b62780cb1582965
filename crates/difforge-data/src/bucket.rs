//! Aspect-ratio buckets for fine-tuning at several image shapes (as kohya's sd-scripts does):
//! instead of cropping every image to one square, each image goes to the bucket (a width x
//! height, both multiples of `step`, of about `resolution`² pixels) whose shape is nearest its
//! own, is resized to cover that bucket and cropped to it; every batch is drawn from one bucket.
//!
//! The pieces, in the order the trainer uses them:
//! - [`bucket_set`]: the buckets of a [`BucketConfig`];
//! - [`assign`]: one bucket (or a reason for dropping it) per image, and a [`BucketReport`];
//! - [`BucketBatches`]: batches from one bucket each, in an order derived from (seed, epoch);
//! - [`place`] then [`crop`] (or [`center_crop`]): the resized size and crop offsets of one
//!   image, a [`Placement`], which also carries what SDXL's size and crop conditioning needs;
//! - [`resize_and_crop`]: the placement applied to the pixels.
//!
//! Nearness of shapes is measured as `|ln((w/h) / (W/H))|` (the "aspect error"), not kohya's
//! `|w/h - W/H|`: the log distance treats a tall image exactly as its transposed wide image, so a
//! 1080x1920 portrait goes to the transpose of the 1920x1080 landscape's bucket.

use difforge_core::{rng_for, ConfigError, Stream};
use image::imageops::{self, FilterType};
use image::{DynamicImage, RgbImage};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Two aspect errors closer than this are a tie (then the larger area wins, then the narrower).
const TIE: f64 = 1e-9;

/// The `[data.buckets]` section: which buckets exist and how images are fitted to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BucketConfig {
    /// Side of the square whose area is the largest bucket area (512 -> 262,144 pixels); a
    /// bucket's width x height never exceeds `resolution`².
    pub resolution: u32,
    /// Smallest bucket side in pixels (a multiple of `step`).
    pub min_size: u32,
    /// Largest bucket side in pixels (a multiple of `step`).
    pub max_size: u32,
    /// Bucket sides are multiples of this many pixels (a multiple of 8: the VAE downsamples by 8).
    pub step: u32,
    /// Never enlarge an image: its bucket is computed from its own size (at most its own area,
    /// at most `resolution`²), and images smaller than `min_size` on a side are dropped.
    pub no_upscale: bool,
}

impl Default for BucketConfig {
    fn default() -> Self {
        BucketConfig { resolution: 512, min_size: 256, max_size: 1024, step: 64, no_upscale: false }
    }
}

impl BucketConfig {
    /// Range checks, naming the offending key (`data.buckets.<field>`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.step == 0 || !self.step.is_multiple_of(8) || self.step > 1024 {
            return Err(ConfigError::new("data.buckets.step", self.step, "a multiple of 8 in 8..=1024 (the VAE downsamples by 8)"));
        }
        if self.min_size < self.step || !self.min_size.is_multiple_of(self.step) {
            return Err(ConfigError::new(
                "data.buckets.min_size",
                self.min_size,
                format!("a multiple of data.buckets.step ({}), at least one step", self.step),
            ));
        }
        if !self.max_size.is_multiple_of(self.step) || self.max_size < self.min_size || self.max_size > 8192 {
            return Err(ConfigError::new(
                "data.buckets.max_size",
                self.max_size,
                format!("a multiple of data.buckets.step ({}) in data.buckets.min_size ({})..=8192", self.step, self.min_size),
            ));
        }
        if !(self.min_size..=self.max_size).contains(&self.resolution) {
            return Err(ConfigError::new(
                "data.buckets.resolution",
                self.resolution,
                format!("data.buckets.min_size..=data.buckets.max_size ({}..={})", self.min_size, self.max_size),
            ));
        }
        Ok(())
    }

    /// The largest bucket area, `resolution`².
    pub fn max_area(&self) -> u64 {
        u64::from(self.resolution) * u64::from(self.resolution)
    }

    fn floor_step(&self, x: u64) -> u32 {
        let step = u64::from(self.step.max(1));
        u32::try_from(x / step * step).unwrap_or(u32::MAX / self.step.max(1) * self.step.max(1))
    }
}

/// A bucket: the width x height (in pixels) every image of a batch is cropped to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Bucket {
    pub width: u32,
    pub height: u32,
}

impl Bucket {
    pub fn new(width: u32, height: u32) -> Bucket {
        Bucket { width, height }
    }

    pub fn area(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// `|ln((w/h) / (width/height))|`: 0 for the same shape, symmetric under transposition.
    pub fn aspect_error(&self, width: u32, height: u32) -> f64 {
        aspect_error(self.width, self.height, width, height)
    }
}

impl fmt::Display for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

fn aspect_error(bw: u32, bh: u32, w: u32, h: u32) -> f64 {
    ((f64::from(bw) * f64::from(h)) / (f64::from(bh) * f64::from(w))).ln().abs()
}

/// The bucket set of `cfg` (kohya's rule): for each width w from `min_size` to `max_size` in
/// steps, the tallest h (a multiple of `step`, at most `max_size`) with w x h <= `resolution`²,
/// kept when h >= `min_size`, together with its transpose h x w; plus the square of side
/// `resolution` rounded down to a step. Deduplicated, sorted by (width, height). Empty for an
/// invalid config (step 0).
///
/// For the defaults (512, 256, 1024, 64) that is 17 buckets: 256x832, 256x896, 256x960,
/// 256x1024, 320x704, 320x768, 384x640, 448x576, 512x512, and the transposes of the non-square ones.
pub fn bucket_set(cfg: &BucketConfig) -> Vec<Bucket> {
    if cfg.step == 0 {
        return Vec::new();
    }
    let area = cfg.max_area();
    let mut set = std::collections::BTreeSet::new();
    let square = cfg.floor_step(u64::from(cfg.resolution));
    if (cfg.min_size..=cfg.max_size).contains(&square) && square > 0 {
        set.insert(Bucket::new(square, square));
    }
    let mut w = cfg.min_size.max(cfg.step);
    while w <= cfg.max_size {
        let h = cfg.floor_step(area / u64::from(w)).min(cfg.floor_step(u64::from(cfg.max_size)));
        if h >= cfg.min_size && h > 0 {
            set.insert(Bucket::new(w, h));
            set.insert(Bucket::new(h, w));
        }
        w += cfg.step;
    }
    set.into_iter().collect()
}

/// The bucket nearest in shape to a `width` x `height` image: smallest aspect error, then the
/// larger area, then the smaller width. None for an empty set.
pub fn nearest_bucket(buckets: &[Bucket], width: u32, height: u32) -> Option<Bucket> {
    let mut best: Option<(f64, Bucket)> = None;
    for &b in buckets {
        let e = b.aspect_error(width, height);
        let better = match best {
            None => true,
            Some((be, bb)) => {
                if (e - be).abs() > TIE {
                    e < be
                } else if b.area() != bb.area() {
                    b.area() > bb.area()
                } else {
                    b.width < bb.width
                }
            }
        };
        if better {
            best = Some((e, b));
        }
    }
    best.map(|(_, b)| b)
}

/// Why an image has no bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DropReason {
    /// A zero width or height.
    Empty { width: u32, height: u32 },
    /// With `no_upscale`, a side shorter than `min_size` (the image would have to be enlarged).
    TooSmall { width: u32, height: u32, min_size: u32 },
    /// The bucket set is empty (an invalid config).
    NoBucket,
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DropReason::Empty { width, height } => write!(f, "{width}x{height} has no pixels"),
            DropReason::TooSmall { width, height, min_size } => {
                write!(f, "{width}x{height} is smaller than data.buckets.min_size = {min_size} on a side and data.buckets.no_upscale is set")
            }
            DropReason::NoBucket => write!(f, "the bucket set is empty"),
        }
    }
}

/// Where an image goes before its crop is chosen: its bucket and the size it is resized to
/// (covering the bucket: both sides >= the bucket's, one equal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Fit {
    pub bucket: Bucket,
    /// The image's own size (width, height).
    pub original: (u32, u32),
    /// The size (width, height) the image is resized to before cropping.
    pub resized: (u32, u32),
}

impl Fit {
    /// Whether the image is enlarged (its resized size exceeds its own).
    pub fn upscaled(&self) -> bool {
        self.resized.0 > self.original.0 || self.resized.1 > self.original.1
    }
}

/// An image's bucket, resized size and crop (in resized pixels). With the original size this is
/// what SDXL's micro-conditioning needs ([`Placement::sdxl_time_ids`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Placement {
    pub bucket: Bucket,
    /// The image's own size (width, height).
    pub original: (u32, u32),
    /// The size (width, height) the image is resized to before cropping.
    pub resized: (u32, u32),
    /// Left edge of the crop in the resized image.
    pub crop_left: u32,
    /// Top edge of the crop in the resized image.
    pub crop_top: u32,
}

impl Placement {
    /// SDXL's `add_time_ids`: original (height, width), crop (top, left), target (height, width).
    pub fn sdxl_time_ids(&self) -> [u32; 6] {
        [self.original.1, self.original.0, self.crop_top, self.crop_left, self.bucket.height, self.bucket.width]
    }

    /// The placement of the mirrored image: the same window, its left edge measured from the
    /// other side (what kohya's sd-scripts records for a flipped SDXL crop).
    pub fn mirrored(self) -> Placement {
        Placement { crop_left: self.resized.0 - self.bucket.width - self.crop_left, ..self }
    }
}

/// The bucket of a `width` x `height` image and the size it is resized to.
///
/// Without `no_upscale`, the bucket is the nearest in shape among `buckets` (normally
/// [`bucket_set`]`(cfg)`); the image may be enlarged. With `no_upscale`, `buckets` is not used:
/// the bucket comes from the image's own set (for each width w, a step multiple between
/// `min_size` and min(`width`, `max_size`), the tallest h <= min(`height`, `max_size`) with
/// w x h <= min(`width` x `height`, `resolution`²), and likewise with the roles swapped), the
/// nearest in shape; so the scale is at most 1, and an image with a side under `min_size` is
/// dropped.
///
/// The resized size is the image scaled by max(bucket w / width, bucket h / height), rounded.
pub fn place(cfg: &BucketConfig, buckets: &[Bucket], width: u32, height: u32) -> Result<Fit, DropReason> {
    if width == 0 || height == 0 {
        return Err(DropReason::Empty { width, height });
    }
    let bucket = if cfg.no_upscale {
        if width < cfg.min_size || height < cfg.min_size {
            return Err(DropReason::TooSmall { width, height, min_size: cfg.min_size });
        }
        nearest_bucket(&own_buckets(cfg, width, height), width, height)
    } else {
        nearest_bucket(buckets, width, height)
    }
    .ok_or(DropReason::NoBucket)?;
    Ok(Fit { bucket, original: (width, height), resized: cover(bucket, width, height) })
}

/// The candidate buckets of one image under `no_upscale` (see [`place`]).
fn own_buckets(cfg: &BucketConfig, width: u32, height: u32) -> Vec<Bucket> {
    if cfg.step == 0 {
        return Vec::new();
    }
    let area = (u64::from(width) * u64::from(height)).min(cfg.max_area());
    let max_w = cfg.floor_step(u64::from(width.min(cfg.max_size)));
    let max_h = cfg.floor_step(u64::from(height.min(cfg.max_size)));
    let mut out = Vec::new();
    let mut s = cfg.min_size.max(cfg.step);
    while s <= max_w.max(max_h) {
        if s <= max_w {
            let h = cfg.floor_step(area / u64::from(s)).min(max_h);
            if h >= cfg.min_size {
                out.push(Bucket::new(s, h));
            }
        }
        if s <= max_h {
            let w = cfg.floor_step(area / u64::from(s)).min(max_w);
            if w >= cfg.min_size {
                out.push(Bucket::new(w, s));
            }
        }
        s += cfg.step;
    }
    out
}

/// The size of a `width` x `height` image scaled to cover `b`: one side equal to the bucket's,
/// the other rounded and never below the bucket's.
fn cover(b: Bucket, width: u32, height: u32) -> (u32, u32) {
    let (bw, bh, w, h) = (u64::from(b.width), u64::from(b.height), u64::from(width), u64::from(height));
    // bw / w >= bh / h: the width binds.
    if bw * h >= bh * w {
        let rh = ((h * bw + w / 2) / w).max(bh);
        (b.width, u32::try_from(rh).unwrap_or(u32::MAX))
    } else {
        let rw = ((w * bh + h / 2) / h).max(bw);
        (u32::try_from(rw).unwrap_or(u32::MAX), b.height)
    }
}

/// The crop of a fit: centred, or (with `random`) at an offset drawn uniformly from the free
/// pixels on each axis (x first, then y).
pub fn crop<R: Rng + ?Sized>(fit: &Fit, random: Option<&mut R>) -> Placement {
    let free_x = fit.resized.0 - fit.bucket.width;
    let free_y = fit.resized.1 - fit.bucket.height;
    let (crop_left, crop_top) = match random {
        None => (free_x / 2, free_y / 2),
        Some(rng) => (rng.random_range(0..=free_x), rng.random_range(0..=free_y)),
    };
    Placement { bucket: fit.bucket, original: fit.original, resized: fit.resized, crop_left, crop_top }
}

/// The centred crop of a fit (`crop` without a generator, no type annotation needed).
pub fn center_crop(fit: &Fit) -> Placement {
    crop(fit, None::<&mut rand::rngs::StdRng>)
}

/// Applies a placement to pixels: alpha composited on white, resized to `p.resized`, cropped to
/// the bucket. The result is `p.bucket.width` x `p.bucket.height`.
///
/// The filter is Lanczos3: the image crate widens the kernel by the reduction factor when
/// shrinking, so large photos are properly low-pass filtered (no aliasing or moiré), as PIL's
/// LANCZOS is in diffusers' and kohya's pipelines; it is the sharpest of the crate's filters
/// when enlarging. It costs more than CatmullRom, but each image is resized once per crop.
pub fn resize_and_crop(img: &DynamicImage, p: &Placement) -> RgbImage {
    let rgb = crate::preprocess::composite_on_white(img);
    let resized = if rgb.dimensions() == p.resized { rgb } else { imageops::resize(&rgb, p.resized.0, p.resized.1, FilterType::Lanczos3) };
    imageops::crop_imm(&resized, p.crop_left, p.crop_top, p.bucket.width, p.bucket.height).to_image()
}

/// The number of images in one bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BucketCount {
    pub width: u32,
    pub height: u32,
    pub images: usize,
}

/// An image that has no bucket, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dropped {
    pub id: String,
    pub reason: DropReason,
    /// The reason in words.
    pub message: String,
}

/// How batches are cut from the buckets ([`BucketBatches::summary`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchingSummary {
    pub batch_size: usize,
    /// Whether the last, partial batch of each bucket is dropped (true) or kept (false).
    pub drop_last: bool,
    pub batches_per_epoch: usize,
    /// Batches smaller than `batch_size` per epoch (kept: one per bucket that does not divide).
    pub partial_batches: usize,
    /// Images seen once per epoch.
    pub images_per_epoch: usize,
    /// Images left out of each epoch by `drop_last` (a different choice of images each epoch).
    pub images_left_out_per_epoch: usize,
}

/// What [`assign`] did: images per bucket, dropped images with reasons, how many were enlarged,
/// and how far the buckets' shapes are from the images'. `Display` prints a table for the log;
/// `Serialize` writes it to the run folder.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BucketReport {
    pub config: BucketConfig,
    /// Buckets in the set (None with `no_upscale`, where each image has its own).
    pub set_size: Option<usize>,
    /// Images given to [`assign`].
    pub images: usize,
    /// Images with a bucket.
    pub placed: usize,
    /// The buckets that received images, sorted by (width, height).
    pub buckets: Vec<BucketCount>,
    pub dropped: Vec<Dropped>,
    /// Placed images that are enlarged to cover their bucket.
    pub upscaled: usize,
    /// Mean and largest `|ln(bucket w/h ÷ image w/h)|` over placed images (0 when none).
    pub mean_aspect_error: f64,
    pub max_aspect_error: f64,
    /// Filled by [`BucketReport::with_batching`].
    pub batching: Option<BatchingSummary>,
}

impl BucketReport {
    /// The report with how batches are cut.
    pub fn with_batching(mut self, batches: &BucketBatches) -> BucketReport {
        self.batching = Some(batches.summary());
        self
    }
}

/// How many dropped images `Display` lists by name.
const LISTED_DROPS: usize = 20;

impl fmt::Display for BucketReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let set = self.set_size.map_or_else(|| "one per image (no_upscale)".to_string(), |n| format!("{n} in the set"));
        writeln!(f, "buckets: resolution {}, sides {}..={} in steps of {}, {set}", c.resolution, c.min_size, c.max_size, c.step)?;
        for b in &self.buckets {
            writeln!(f, "  {:>10}  {:>7} images", format!("{}x{}", b.width, b.height), b.images)?;
        }
        writeln!(f, "  {} of {} images placed in {} buckets, {} upscaled", self.placed, self.images, self.buckets.len(), self.upscaled)?;
        writeln!(f, "  aspect error |ln(bucket w/h / image w/h)|: mean {:.4}, max {:.4}", self.mean_aspect_error, self.max_aspect_error)?;
        if let Some(b) = &self.batching {
            let last = if b.drop_last {
                format!("last partial batch of each bucket dropped ({} images left out per epoch)", b.images_left_out_per_epoch)
            } else {
                format!("last partial batch of each bucket kept ({} partial batches)", b.partial_batches)
            };
            writeln!(f, "  {} batches of up to {} per epoch ({} images), {last}", b.batches_per_epoch, b.batch_size, b.images_per_epoch)?;
        }
        if !self.dropped.is_empty() {
            writeln!(f, "  dropped {} images:", self.dropped.len())?;
            for d in self.dropped.iter().take(LISTED_DROPS) {
                writeln!(f, "    {}: {}", d.id, d.message)?;
            }
            if self.dropped.len() > LISTED_DROPS {
                writeln!(f, "    ... and {} more", self.dropped.len() - LISTED_DROPS)?;
            }
        }
        Ok(())
    }
}

/// The bucket of each image (`sizes`: id, width, height), None for a dropped one, and the
/// report. Uses [`bucket_set`]`(cfg)` and [`place`]; `cfg` should be validated first.
pub fn assign(cfg: &BucketConfig, sizes: &[(String, u32, u32)]) -> (Vec<Option<Bucket>>, BucketReport) {
    let set = if cfg.no_upscale { Vec::new() } else { bucket_set(cfg) };
    let placed: Vec<(String, Result<Fit, DropReason>)> = sizes.iter().map(|(id, w, h)| (id.clone(), place(cfg, &set, *w, *h))).collect();
    let assigned = placed.iter().map(|(_, fit)| fit.as_ref().ok().map(|f| f.bucket)).collect();
    (assigned, BucketReport::of_fits(cfg, &placed))
}

impl BucketReport {
    /// The report of images already placed ([`place`] with [`bucket_set`]`(cfg)`): each image's
    /// id and its fit or the reason it was dropped.
    pub fn of_fits(cfg: &BucketConfig, placed: &[(String, Result<Fit, DropReason>)]) -> BucketReport {
        let mut counts: BTreeMap<Bucket, usize> = BTreeMap::new();
        let mut dropped = Vec::new();
        let (mut upscaled, mut err_sum, mut err_max) = (0usize, 0.0f64, 0.0f64);
        for (id, fit) in placed {
            match fit {
                Ok(fit) => {
                    *counts.entry(fit.bucket).or_default() += 1;
                    upscaled += usize::from(fit.upscaled());
                    let e = fit.bucket.aspect_error(fit.original.0, fit.original.1);
                    err_sum += e;
                    err_max = err_max.max(e);
                }
                Err(reason) => dropped.push(Dropped { id: id.clone(), reason: reason.clone(), message: reason.to_string() }),
            }
        }
        let n_placed = placed.len() - dropped.len();
        BucketReport {
            config: *cfg,
            set_size: (!cfg.no_upscale).then(|| bucket_set(cfg).len()),
            images: placed.len(),
            placed: n_placed,
            buckets: counts.into_iter().map(|(b, images)| BucketCount { width: b.width, height: b.height, images }).collect(),
            dropped,
            upscaled,
            mean_aspect_error: if n_placed == 0 { 0.0 } else { err_sum / n_placed as f64 },
            max_aspect_error: err_max,
            batching: None,
        }
    }
}

impl BucketReport {
    /// The report of two sets of images placed with the same config (subsets of one dataset).
    pub fn merge(a: BucketReport, b: BucketReport) -> BucketReport {
        let mut counts: BTreeMap<Bucket, usize> = BTreeMap::new();
        for c in a.buckets.iter().chain(&b.buckets) {
            *counts.entry(Bucket::new(c.width, c.height)).or_default() += c.images;
        }
        let placed = a.placed + b.placed;
        let err_sum = a.mean_aspect_error * a.placed as f64 + b.mean_aspect_error * b.placed as f64;
        BucketReport {
            config: a.config,
            set_size: a.set_size,
            images: a.images + b.images,
            placed,
            buckets: counts.into_iter().map(|(b, images)| BucketCount { width: b.width, height: b.height, images }).collect(),
            dropped: a.dropped.into_iter().chain(b.dropped).collect(),
            upscaled: a.upscaled + b.upscaled,
            mean_aspect_error: if placed == 0 { 0.0 } else { err_sum / placed as f64 },
            max_aspect_error: a.max_aspect_error.max(b.max_aspect_error),
            batching: None,
        }
    }
}

/// One batch: its bucket and the indices of its images.
pub type BucketBatch = (Bucket, Vec<usize>);

/// Batches that each come from one bucket, in an order derived from (seed, epoch) only.
///
/// Epoch e: with `rng_for(seed, Stream::Shuffle, e)`, the images of each bucket (buckets in
/// (width, height) order) are shuffled and cut into batches of `batch_size` (the last, partial
/// batch of a bucket kept, or dropped with `drop_last`), then the list of batches is shuffled.
/// Global batch index i is batch i % per-epoch of epoch i / per-epoch, so a resumed run asking
/// for step s gets exactly the batch the uninterrupted run did.
#[derive(Debug, Clone)]
pub struct BucketBatches {
    /// Each bucket with its image indices (ascending), buckets sorted.
    groups: Vec<BucketBatch>,
    batch_size: usize,
    seed: u64,
    drop_last: bool,
    per_epoch: usize,
    /// The batches of the last epoch asked for.
    cache: Option<(u64, Vec<BucketBatch>)>,
}

impl BucketBatches {
    /// `assignments[i]` is image i's bucket (None: not used). A `batch_size` of 0 is taken as 1.
    pub fn new(assignments: &[Option<Bucket>], batch_size: usize, seed: u64, drop_last: bool) -> Self {
        let members = assignments.iter().enumerate().filter_map(|(i, b)| b.map(|b| (i, b)));
        BucketBatches::of_members(members, batch_size, seed, drop_last)
    }

    /// The batches of (image index, bucket) pairs; an index listed r times (repeats) appears r
    /// times per epoch.
    pub fn of_members(members: impl IntoIterator<Item = (usize, Bucket)>, batch_size: usize, seed: u64, drop_last: bool) -> Self {
        let batch_size = batch_size.max(1);
        let mut groups: BTreeMap<Bucket, Vec<usize>> = BTreeMap::new();
        for (i, b) in members {
            groups.entry(b).or_default().push(i);
        }
        for ix in groups.values_mut() {
            ix.sort_unstable();
        }
        let groups: Vec<BucketBatch> = groups.into_iter().collect();
        let per_epoch = groups.iter().map(|(_, ix)| if drop_last { ix.len() / batch_size } else { ix.len().div_ceil(batch_size) }).sum();
        BucketBatches { groups, batch_size, seed, drop_last, per_epoch, cache: None }
    }

    pub fn batches_per_epoch(&self) -> usize {
        self.per_epoch
    }

    /// True when there is no batch at all (no images, or every bucket smaller than a batch with
    /// `drop_last`); [`BucketBatches::batch`] must not be called then.
    pub fn is_empty(&self) -> bool {
        self.per_epoch == 0
    }

    /// The batches of `epoch`, in order.
    pub fn epoch(&self, epoch: u64) -> Vec<BucketBatch> {
        let mut rng = rng_for(self.seed, Stream::Shuffle, epoch);
        let mut batches = Vec::with_capacity(self.per_epoch);
        for (bucket, members) in &self.groups {
            let mut order = members.clone();
            order.shuffle(&mut rng);
            for chunk in order.chunks(self.batch_size) {
                if chunk.len() == self.batch_size || !self.drop_last {
                    batches.push((*bucket, chunk.to_vec()));
                }
            }
        }
        batches.shuffle(&mut rng);
        batches
    }

    /// The batch with global index `index` (training step): its bucket and image indices.
    ///
    /// # Panics
    /// When [`BucketBatches::is_empty`].
    pub fn batch(&mut self, index: u64) -> BucketBatch {
        assert!(self.per_epoch > 0, "BucketBatches::batch: no batches (no images, or every bucket smaller than a batch with drop_last)");
        let per = self.per_epoch as u64;
        let (epoch, within) = (index / per, (index % per) as usize);
        if self.cache.as_ref().map(|(e, _)| *e) != Some(epoch) {
            self.cache = Some((epoch, self.epoch(epoch)));
        }
        self.cache.as_ref().map(|(_, b)| b[within].clone()).unwrap_or_else(|| unreachable!("cache set above"))
    }

    /// How the batches are cut, for the report.
    pub fn summary(&self) -> BatchingSummary {
        let (mut partial, mut left_out, mut images) = (0, 0, 0);
        for (_, ix) in &self.groups {
            let rest = ix.len() % self.batch_size;
            if self.drop_last {
                left_out += rest;
                images += ix.len() - rest;
            } else {
                partial += usize::from(rest > 0);
                images += ix.len();
            }
        }
        BatchingSummary {
            batch_size: self.batch_size,
            drop_last: self.drop_last,
            batches_per_epoch: self.per_epoch,
            partial_batches: partial,
            images_per_epoch: images,
            images_left_out_per_epoch: left_out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cover_keeps_one_side_and_never_falls_short() {
        let b = Bucket::new(640, 384);
        assert_eq!(cover(b, 1920, 1080), (683, 384));
        assert_eq!(cover(b, 640, 384), (640, 384));
        // A tall image in a wide bucket: the width binds.
        assert_eq!(cover(b, 100, 1000), (640, 6400));
    }

    #[test]
    fn own_buckets_stay_inside_the_image() {
        let cfg = BucketConfig { no_upscale: true, ..Default::default() };
        for (w, h) in [(300, 300), (1920, 1080), (257, 2000), (5000, 256)] {
            let own = own_buckets(&cfg, w, h);
            assert!(!own.is_empty(), "{w}x{h}");
            for b in own {
                assert!(b.width <= w && b.height <= h && b.area() <= cfg.max_area(), "{b} for {w}x{h}");
            }
        }
    }

    #[test]
    fn ties_prefer_the_larger_area() {
        // Both exact squares: the larger wins; equal shapes and areas: the narrower.
        let set = [Bucket::new(256, 256), Bucket::new(512, 512), Bucket::new(384, 384)];
        assert_eq!(nearest_bucket(&set, 1000, 1000), Some(Bucket::new(512, 512)));
        // 1:1 image, 576x448 and 448x576 equally far in log terms, same area: the narrower.
        let set = [Bucket::new(576, 448), Bucket::new(448, 576)];
        assert_eq!(nearest_bucket(&set, 100, 100), Some(Bucket::new(448, 576)));
    }
}
