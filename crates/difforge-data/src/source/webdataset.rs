//! Webdataset tar shards streamed from disk, for datasets that do not fit in memory.
//!
//! The stream of one rank: epoch e reads the rank's share of the shards (every world-th shard of
//! a permutation seeded by (seed, e)) through a shuffle buffer seeded by (seed, e, rank);
//! epochs follow each other endlessly. The batch of draw d holds the rank's stream positions
//! d*size .. (d+1)*size, and is a function of (config, seed, rank, world, d, size) alone:
//! sequential draws continue the open reader, any other draw replays its epoch from the start
//! (reading the bytes of the entries it passes, decoding none), so a resumed run sees exactly
//! what the uninterrupted one did. Images are decoded only for the batch that returns them,
//! exactly as the folder source and [`Loader`](crate::Loader) would: preprocessing, then the
//! crop and augmentations drawn from (seed, position).

mod epoch;
mod samples;
mod shards;

pub use shards::{expand_braces, resolve_shards};

use self::epoch::{rank_shards, Epoch, Reading};
use self::samples::{RawSample, ShardReader};
use crate::batch::{train_image, Batch};
use crate::config::{AugmentConfig, CropMode, DataConfig, SourceKind};
use crate::error::DataError;
use crate::pixels::Pixels;
use crate::preprocess::Preprocess;
use crate::source::folder::{decode_bytes, DecodeError};
use difforge_core::{rng_for, ConfigError, Stream};
use rayon::prelude::*;
use std::path::PathBuf;
use std::sync::Arc;

/// A rank's endless, deterministic stream of samples from webdataset shards.
pub struct ShardStream {
    shards: Arc<[PathBuf]>,
    class_names: Vec<String>,
    /// The model's class count, when it is told (labels at or past it are refused).
    model_classes: Option<usize>,
    reading: Reading,
    recipe: Recipe,
    /// Samples per shard, counted from the headers on the first non-sequential draw.
    counts: Option<Vec<u64>>,
    epoch: Epoch,
    skipped: u64,
}

/// How one encoded image becomes a training image.
struct Recipe {
    prep: Preprocess,
    max_pixels: u64,
    side: usize,
    channels: usize,
    crop: CropMode,
    augment: AugmentConfig,
}

impl ShardStream {
    /// Opens the stream of `rank` of `world` for a `[data]` section with source "webdataset".
    pub fn open(cfg: &DataConfig, seed: u64, rank: usize, world: usize) -> Result<ShardStream, DataError> {
        if cfg.source != SourceKind::Webdataset {
            return Err(ConfigError::new("data.source", cfg.source.name(), "\"webdataset\" for a shard stream").into());
        }
        cfg.validate()?;
        if world == 0 || rank >= world {
            return Err(ConfigError::new("rank", rank, format!("a rank below the world size ({world})")).into());
        }
        let path = cfg.path.as_deref().ok_or_else(|| ConfigError::problem("data.path", "required for data.source = \"webdataset\""))?;
        let shards: Arc<[PathBuf]> = resolve_shards(path)?.into();
        if shards.len() < world {
            let found = format!("{} shard(s) for {world} ranks", shards.len());
            return Err(ConfigError::new("data.path", path.display(), format!("at least one shard per rank ({found}); write smaller shards")).into());
        }
        let class_names = if cfg.class_names.is_empty() { shards::class_names_beside(&shards)? } else { cfg.class_names.clone() };
        let reading = Reading { seed, rank, world, buffer: cfg.shuffle_buffer };
        let recipe = Recipe {
            prep: Preprocess { size: cfg.image_size, color: cfg.color_mode(), pad: cfg.pad, buckets: None },
            max_pixels: cfg.max_pixels,
            side: cfg.image_size as usize,
            channels: cfg.channels as usize,
            crop: cfg.crop,
            augment: cfg.augment.clone(),
        };
        let epoch = Epoch::new(shards.clone(), reading, 0, 0);
        Ok(ShardStream { shards, class_names, model_classes: None, reading, recipe, counts: None, epoch, skipped: 0 })
    }

    /// Refuses, naming the shard and sample, labels the model has no class for (a stream's labels
    /// are only seen as it is read, after every setup check).
    pub fn for_model_classes(mut self, classes: Option<usize>) -> ShardStream {
        self.model_classes = classes;
        self
    }

    /// The shard files, in name (or pattern) order.
    pub fn shards(&self) -> &[PathBuf] {
        &self.shards
    }

    /// Class names in label order: `data.class_names`, else those of `dataset.json`.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// Corrupt images met in the batches returned so far (each replaced, see [`Self::batch`]).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The batch of `draw`: this rank's stream positions draw*size .. (draw+1)*size. A corrupt
    /// image is skipped (logged with its shard and key, and counted) and its slot filled with
    /// the next good image of the batch, so batches keep their size and no other batch moves.
    pub fn batch(&mut self, draw: u64, size: usize) -> Result<Batch, DataError> {
        if size == 0 {
            return Err(ConfigError::new("batch size", size, "at least 1").into());
        }
        let start = draw.checked_mul(size as u64).ok_or_else(|| ConfigError::new("draw", draw, "a draw whose position fits in 64 bits"))?;
        self.seek(start)?;
        let samples = self.take(size)?;
        self.assemble(draw, start, &samples)
    }

    /// Puts the next sample at stream position `pos`.
    fn seek(&mut self, pos: u64) -> Result<(), DataError> {
        if self.epoch.next_pos == pos {
            return Ok(());
        }
        let (index, start) = self.locate(pos)?;
        if !(index == self.epoch.index && pos > self.epoch.next_pos) {
            self.epoch = Epoch::new(self.shards.clone(), self.reading, index, start);
        }
        while self.epoch.next_pos < pos {
            if self.epoch.next()?.is_none() {
                return Err(DataError::shard(&self.shards[0], "the shards changed while being read (an epoch ended early)"));
            }
        }
        Ok(())
    }

    /// The epoch holding stream position `pos`, and that epoch's first position.
    fn locate(&mut self, pos: u64) -> Result<(u64, u64), DataError> {
        let counts = self.counts()?;
        let r = self.reading;
        let (mut index, mut start) = (0, 0);
        loop {
            let len: u64 = rank_shards(counts.len(), r.seed, index, r.rank, r.world).iter().map(|&s| counts[s]).sum();
            if len == 0 {
                return Err(self.empty_epoch(index));
            }
            if pos < start + len {
                return Ok((index, start));
            }
            start += len;
            index += 1;
        }
    }

    fn counts(&mut self) -> Result<Vec<u64>, DataError> {
        if self.counts.is_none() {
            let counts = self.shards.par_iter().map(|s| ShardReader::count(s)).collect::<Result<Vec<u64>, DataError>>()?;
            self.counts = Some(counts);
        }
        Ok(self.counts.clone().unwrap_or_default())
    }

    /// The next `size` samples, crossing into the following epochs as needed.
    fn take(&mut self, size: usize) -> Result<Vec<RawSample>, DataError> {
        let mut out = Vec::with_capacity(size);
        while out.len() < size {
            match self.epoch.next()? {
                Some(s) => out.push(s),
                None if self.epoch.next_pos == self.epoch.start => return Err(self.empty_epoch(self.epoch.index)),
                None => self.epoch = Epoch::new(self.shards.clone(), self.reading, self.epoch.index + 1, self.epoch.next_pos),
            }
        }
        Ok(out)
    }

    fn empty_epoch(&self, index: u64) -> DataError {
        let r = self.reading;
        DataError::shard(
            self.shards.first().and_then(|s| s.parent()).unwrap_or(std::path::Path::new(".")),
            format!("the shards of rank {} of {} in epoch {index} hold no sample with an image", r.rank, r.world),
        )
    }

    /// Decodes the samples in parallel and builds the batch.
    fn assemble(&mut self, draw: u64, start: u64, samples: &[RawSample]) -> Result<Batch, DataError> {
        let recipe = &self.recipe;
        let decoded: Vec<Result<Pixels, DecodeError>> =
            samples.par_iter().map(|s| decode_bytes(&s.image, &s.image_ext, recipe.max_pixels).map(|img| recipe.prep.apply(&img))).collect();
        for (s, result) in samples.iter().zip(&decoded) {
            if let Err(reason) = result {
                tracing::warn!("{}: skipping the image of sample `{}`: {reason}", s.shard.display(), s.key);
                self.skipped += 1;
            }
        }
        let unreadable = || DataError::shard(&*samples[0].shard, format!("every image of draw {draw} is unreadable"));
        let source = fill_slots(&decoded).ok_or_else(unreadable)?;
        let pixels: Vec<&Pixels> = source.iter().map(|&i| decoded[i].as_ref().ok()).collect::<Option<_>>().ok_or_else(unreadable)?;
        let labels = source.iter().map(|&i| self.label_of(&samples[i])).collect::<Result<Vec<i64>, DataError>>()?;
        let r = self.reading;
        let recipe = &self.recipe;
        let images: Vec<Vec<f32>> = pixels
            .par_iter()
            .enumerate()
            .map(|(j, px)| {
                // Positions differ between ranks, so their crops and augmentations do too.
                let index = (start + j as u64).wrapping_mul(r.world as u64).wrapping_add(r.rank as u64);
                let mut rng = rng_for(r.seed, Stream::Augment, index);
                train_image(px, recipe.channels, recipe.side, recipe.crop, &recipe.augment, &mut rng)
            })
            .collect();
        let captions = source.iter().map(|&i| samples[i].caption.clone()).collect();
        Ok(Batch::new(images.concat(), labels, captions, recipe.channels, recipe.side, recipe.side))
    }

    /// The label as a batch holds it (-1 without one); an index past the known classes is an error.
    fn label_of(&self, s: &RawSample) -> Result<i64, DataError> {
        match s.label {
            None => Ok(-1),
            Some(l) if !self.class_names.is_empty() && l >= self.class_names.len() => {
                Err(DataError::shard(&*s.shard, format!("sample `{}`: class {l}, but there are {} class names", s.key, self.class_names.len())))
            }
            Some(l) if self.model_classes.is_some_and(|k| l >= k) => Err(DataError::shard(
                &*s.shard,
                format!("sample `{}`: class {l}, but the model has {} classes (model.num_classes)", s.key, self.model_classes.unwrap_or(0)),
            )),
            Some(l) => Ok(l as i64),
        }
    }
}

/// For each slot, the sample whose image fills it: its own, or for a corrupt one the next good
/// image after it (wrapping around). None when no image of the batch decoded.
fn fill_slots<T, E>(decoded: &[Result<T, E>]) -> Option<Vec<usize>> {
    let n = decoded.len();
    (0..n).map(|j| (0..n).map(|k| (j + k) % n).find(|&i| decoded[i].is_ok())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_slots_take_the_next_good_image() {
        let d: Vec<Result<u8, ()>> = vec![Ok(0), Err(()), Err(()), Ok(3)];
        assert_eq!(fill_slots(&d), Some(vec![0, 3, 3, 3]));
        let d: Vec<Result<u8, ()>> = vec![Err(()), Ok(1)];
        assert_eq!(fill_slots(&d), Some(vec![1, 1]));
        assert_eq!(fill_slots::<u8, ()>(&[Err(())]), None);
    }
}
