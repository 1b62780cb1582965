//! The run's data: loaded once, checked against the model (and by the data check when
//! `data.check` is on), and split into training and validation images; or, for webdataset
//! shards, streamed from disk with validation images from `data.val_path`.

use crate::error::TrainError;
use crate::parallel::Shard;
use crate::prefetch::Prefetcher;
use crate::world::World;
use difforge_config::RunConfig;
use difforge_data::check::{check_folder, check_set, CheckOptions, TokenCounter};
use difforge_data::{source, Balance, Batch, BucketBatches, BucketReport, ImageSet, Loader, ShardStream, SourceKind, Split};
use difforge_model::Family;
use std::path::Path;
use std::sync::Arc;

/// Where training batches come from.
pub enum TrainBatches {
    /// An in-memory set: the batch of a step is the same whatever the number of processes; each
    /// rank assembles it and trains on its rows.
    Memory(Loader),
    /// Webdataset shards: each rank streams its own shards, so its batches are its own
    /// (batch_size / processes images each).
    Stream(Box<ShardStream>),
    /// An in-memory set whose next batch a thread assembles during the step (`train.prefetch`).
    Prefetched(Prefetcher),
}

impl TrainBatches {
    /// The batches of a run: the in-memory loader of the training split, or this rank's stream.
    /// `classes`: the model's class count (None: not class-conditioned), which streamed labels
    /// are checked against as they are read.
    pub fn new(cfg: &RunConfig, set: &Arc<ImageSet>, split: &Split, world: &World, classes: Option<usize>) -> Result<TrainBatches, TrainError> {
        if cfg.data.source == SourceKind::Webdataset {
            if cfg.data.balance == Balance::Class {
                return Err(difforge_core::ConfigError::new(
                    "data.balance",
                    "\"class\"",
                    "\"none\" for streamed shards (classes are not known before reading them)",
                )
                .into());
            }
            let stream = ShardStream::open(&cfg.data, cfg.seed, world.rank, world.size)?.for_model_classes(classes);
            return Ok(TrainBatches::Stream(Box::new(stream)));
        }
        if set.is_bucketed() && world.size > 1 {
            // Bucket batches vary in size, and the ranks share each batch's rows equally.
            return Err(difforge_core::ConfigError::new(
                "data.buckets",
                format!("{} processes", world.size),
                "one process (bucketed batches are not split over ranks yet)",
            )
            .into());
        }
        let mut loader = Loader::new(set.clone(), set.repeated(&split.train), cfg.data.image_size, cfg.data.crop, cfg.data.augment.clone(), cfg.seed);
        if cfg.data.balance == Balance::Class {
            loader = loader.balanced();
        }
        if cfg.train.prefetch {
            return Ok(TrainBatches::Prefetched(
                Prefetcher::start(loader).map_err(|e| TrainError::Other(format!("cannot start the batch prefetch thread: {e}")))?,
            ));
        }
        Ok(TrainBatches::Memory(loader))
    }

    /// True when a batch holds only this rank's images (streams), not the global batch.
    pub fn rank_local(&self) -> bool {
        matches!(self, TrainBatches::Stream(_))
    }

    /// The batch of `draw` for a global batch of `global` images: the whole of it from memory,
    /// this rank's share from a stream.
    pub fn batch(&mut self, draw: u64, global: usize, shard: Shard) -> Result<Batch, TrainError> {
        match self {
            TrainBatches::Memory(loader) => Ok(loader.train_batch(draw, global)),
            TrainBatches::Stream(stream) => Ok(stream.batch(draw, shard.rows(global).len())?),
            TrainBatches::Prefetched(p) => p.batch(draw, global).map_err(TrainError::Other),
        }
    }
}

/// Where the full data check of a run is written.
pub const CHECK_REPORT: &str = "data-check.json";

/// Loads the dataset, checks it against the model family (and with `data.check`, with the data
/// check, whose full report goes to `run_dir`) and splits it.
pub fn load(cfg: &RunConfig, family: &dyn Family, run_dir: &Path) -> Result<(Arc<ImageSet>, Split), TrainError> {
    if cfg.data.source == SourceKind::Webdataset {
        return load_streamed(cfg, family);
    }
    if let Some(buckets) = &cfg.data.buckets {
        check_bucket_step(buckets, family)?;
    }
    let set = source::load(&cfg.data)?;
    if let Some(first) = set.skipped.first() {
        tracing::warn!("{} unreadable image file(s) skipped, e.g. {}: {}", set.skipped.len(), first.path.display(), first.reason);
    }
    for note in family.check_data(&set)? {
        tracing::info!("{note}");
    }
    if cfg.data.check {
        for w in data_check_warnings(cfg, &set, run_dir, family.caption_tokens())? {
            tracing::warn!("data check: {w}");
        }
    }
    let split = if cfg.data.val_path.is_some() {
        Split { train: (0..set.len()).collect(), val: Vec::new() }
    } else {
        Split::new(&set.ids, cfg.data.val_fraction, cfg.seed)
    };
    if split.train.is_empty() {
        return Err(difforge_core::ConfigError::new("data.val_fraction", cfg.data.val_fraction, "a fraction that leaves training images").into());
    }
    if let Some(report) = &set.bucket_report {
        write_bucket_report(cfg, &set, report, &split, run_dir)?;
    }
    Ok((Arc::new(set), split))
}

/// Where the bucket report of a run is written.
pub const BUCKET_REPORT: &str = "buckets.json";

/// Bucket sides must be multiples of what the model takes (the VAE's scale times the UNet's
/// downsamplings); families that train at one size take no buckets.
fn check_bucket_step(buckets: &difforge_data::BucketConfig, family: &dyn Family) -> Result<(), TrainError> {
    let Some(multiple) = family.bucket_step() else {
        return Err(difforge_core::ConfigError::problem(
            "data.buckets",
            format!("only for model.family = \"stable-diffusion\" ({} models train at one size)", family.name()),
        )
        .into());
    };
    if i64::from(buckets.step) % multiple != 0 {
        let why = format!("a multiple of {multiple} (the VAE's scale times the UNet's downsamplings)");
        return Err(difforge_core::ConfigError::new("data.buckets.step", buckets.step, why).into());
    }
    Ok(())
}

/// The bucket report (images per bucket, dropped images and why, how the training images are
/// cut into batches) in the log and in `run_dir`/buckets.json: no image leaves silently.
fn write_bucket_report(cfg: &RunConfig, set: &ImageSet, report: &BucketReport, split: &Split, run_dir: &Path) -> Result<(), TrainError> {
    let members = set.repeated(&split.train).into_iter().map(|i| (i, set.fits[i].bucket));
    let report = report.clone().with_batching(&BucketBatches::of_members(members, cfg.train.batch_size, cfg.seed, false));
    for line in report.to_string().lines() {
        tracing::info!("{line}");
    }
    if !report.dropped.is_empty() {
        tracing::warn!("{} of {} images have no bucket and are left out (listed in {BUCKET_REPORT})", report.dropped.len(), report.images);
    }
    let file = run_dir.join(BUCKET_REPORT);
    let json = serde_json::to_vec_pretty(&report).map_err(|e| TrainError::Other(e.to_string()))?;
    difforge_core::write_atomic(&file, &json).map_err(|e| TrainError::io(&file, e))
}

/// For streamed shards, what is held in memory is the validation folder (`data.val_path`), which
/// the model is checked against; no split is made (the shards are all training data).
fn load_streamed(cfg: &RunConfig, family: &dyn Family) -> Result<(Arc<ImageSet>, Split), TrainError> {
    let empty = Split { train: Vec::new(), val: Vec::new() };
    let Some(val_path) = &cfg.data.val_path else {
        if cfg.train.val_every > 0 {
            return Err(difforge_core::ConfigError::new(
                "data.val_path",
                "(none)",
                "a folder of validation images for streamed shards (or train.val_every = 0)",
            )
            .into());
        }
        return Ok((Arc::new(ImageSet::default()), empty));
    };
    let folder = cfg.data.for_folder(val_path);
    let set = source::load(&folder)?;
    for note in family.check_data(&set)? {
        tracing::info!("{note}");
    }
    if cfg.data.check {
        tracing::warn!("data.check looks at in-memory sets; run `difforge data check` on the folder the shards were made from");
    }
    Ok((Arc::new(set), empty))
}

/// The data check's summary for the configured dataset: one line per kind of problem, never the
/// whole list. For folders the full report is written to `run_dir`/data-check.json.
fn data_check_warnings(cfg: &RunConfig, set: &ImageSet, run_dir: &Path, caption_tokens: Option<TokenCounter>) -> Result<Vec<String>, TrainError> {
    let d = &cfg.data;
    let opts = CheckOptions {
        model_size: d.image_size,
        channels: d.channels,
        pad: d.pad,
        max_pixels: d.max_pixels,
        captions: difforge_data::source::metadata::CaptionSource::of(d),
        caption_tokens,
        ..Default::default()
    };
    match (d.source, &d.path) {
        (SourceKind::Folder, Some(path)) => {
            let report = check_folder(path, &opts)?;
            let file = run_dir.join(CHECK_REPORT);
            let json = serde_json::to_vec_pretty(&report).map_err(|e| TrainError::Other(e.to_string()))?;
            difforge_core::write_atomic(&file, &json).map_err(|e| TrainError::io(&file, e))?;
            let mut warnings = report.warnings;
            if !warnings.is_empty() {
                warnings.push(format!("the full report is in {}", file.display()));
            }
            Ok(warnings)
        }
        _ => Ok(check_set(set, &opts)),
    }
}
