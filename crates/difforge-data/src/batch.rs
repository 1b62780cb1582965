//! Deterministic, resumable batches. Training reads an endless stream of sample positions;
//! position p falls in epoch p / n, where the order is a permutation seeded by (seed, epoch).
//! Crops and augmentations are drawn from (seed, p). So the batch of any step can be rebuilt
//! from the step number alone: a resumed run sees exactly the data the uninterrupted one did.

use crate::augment::{augment, mirror_rows};
use crate::bucket::{center_crop, crop, BucketBatches, Fit, Placement};
use crate::config::{AugmentConfig, CropMode};
use crate::image_set::ImageSet;
use crate::mask::split_mask;
use crate::pixels::Pixels;
use crate::preprocess::shorter_side_to;
use crate::subset::CaptionRule;
use difforge_core::{rng_for, Stream};
use rand::seq::SliceRandom;
use rand::Rng;
use rayon::prelude::*;
use std::sync::Arc;

/// A batch of planar float images in [-1, 1], their labels (-1 for unlabelled) and captions.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    /// The caption of each image (None where the dataset has none).
    pub captions: Vec<Option<String>>,
    pub size: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// With aspect-ratio buckets: each image's bucket, original size and crop (what SDXL's size
    /// and crop conditioning takes); empty for square crops of the model size.
    pub placements: Vec<Placement>,
    /// With `[[data.subsets]]`: how each image's caption is treated; empty without subsets.
    pub caption_rules: Vec<CaptionRule>,
    /// With masked loss: each image's mask (N x H x W, in [0, 1]: how much each pixel counts);
    /// empty without masks.
    pub masks: Vec<f32>,
}

impl Batch {
    /// A batch of `size` planar images of one shape, without placements.
    pub fn new(images: Vec<f32>, labels: Vec<i64>, captions: Vec<Option<String>>, channels: usize, height: usize, width: usize) -> Batch {
        Batch { size: labels.len(), images, labels, captions, channels, height, width, placements: Vec::new(), caption_rules: Vec::new(), masks: Vec::new() }
    }

    /// (N, C, H, W).
    pub fn shape(&self) -> [i64; 4] {
        [self.size as i64, self.channels as i64, self.height as i64, self.width as i64]
    }
}

/// Maps stream positions to dataset indices, one seeded permutation per epoch.
#[derive(Debug, Clone)]
pub struct BatchSampler {
    indices: Vec<usize>,
    seed: u64,
    epoch: Option<(u64, Vec<usize>)>,
    /// For class-balanced sampling: the indices of each class.
    by_class: Option<Vec<Vec<usize>>>,
}

impl BatchSampler {
    pub fn new(indices: Vec<usize>, seed: u64) -> BatchSampler {
        BatchSampler { indices, seed, epoch: None, by_class: None }
    }

    /// Class-balanced: each position draws a class uniformly, then that class's next image
    /// in a per-epoch shuffled cycle. Unlabelled images form their own group.
    pub fn balanced(indices: Vec<usize>, labels: &[Option<usize>], seed: u64) -> BatchSampler {
        let mut groups: std::collections::BTreeMap<Option<usize>, Vec<usize>> = Default::default();
        for &i in &indices {
            groups.entry(labels[i]).or_default().push(i);
        }
        BatchSampler { indices, seed, epoch: None, by_class: Some(groups.into_values().collect()) }
    }

    fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut rng = rng_for(self.seed, Stream::Shuffle, epoch);
        match &self.by_class {
            None => {
                let mut order = self.indices.clone();
                order.shuffle(&mut rng);
                order
            }
            Some(groups) => {
                let mut cycles: Vec<Vec<usize>> = groups.clone();
                for c in &mut cycles {
                    c.shuffle(&mut rng);
                }
                let mut next = vec![0usize; cycles.len()];
                (0..self.indices.len())
                    .map(|_| {
                        let g = rng.random_range(0..cycles.len());
                        let pick = cycles[g][next[g] % cycles[g].len()];
                        next[g] += 1;
                        pick
                    })
                    .collect()
            }
        }
    }

    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The dataset index at stream position `pos`.
    pub fn index_at(&mut self, pos: u64) -> usize {
        let n = self.indices.len() as u64;
        let epoch = pos / n;
        if self.epoch.as_ref().map(|(e, _)| *e) != Some(epoch) {
            self.epoch = Some((epoch, self.epoch_order(epoch)));
        }
        let order = &self.epoch.as_ref().expect("set above").1;
        order[(pos % n) as usize]
    }
}

/// Assembles batches from an in-memory set: crop to the model size, augment, convert.
#[derive(Debug, Clone)]
pub struct Loader {
    set: Arc<ImageSet>,
    sampler: BatchSampler,
    side: usize,
    crop: CropMode,
    augment: AugmentConfig,
    seed: u64,
    /// With a bucketed set: the one-bucket batches of the training indices, and the batch size
    /// they were cut for.
    buckets: Option<(usize, BucketBatches)>,
}

impl Loader {
    pub fn new(set: Arc<ImageSet>, indices: Vec<usize>, side: u32, crop: CropMode, augment: AugmentConfig, seed: u64) -> Loader {
        Loader { set, sampler: BatchSampler::new(indices, seed), side: side as usize, crop, augment, seed, buckets: None }
    }

    /// Switches to class-balanced sampling.
    pub fn balanced(mut self) -> Loader {
        self.sampler = BatchSampler::balanced(self.sampler.indices.clone(), &self.set.labels, self.seed);
        self
    }

    pub fn len(&self) -> usize {
        self.sampler.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sampler.is_empty()
    }

    /// The training batch of `step` for a batch size: stream positions step*B .. (step+1)*B;
    /// or, for a bucketed set, batch `step` of the one-bucket batches ([`BucketBatches`]).
    pub fn train_batch(&mut self, step: u64, batch_size: usize) -> Batch {
        if self.set.is_bucketed() {
            return self.bucket_batch(step, batch_size);
        }
        let positions: Vec<(u64, usize)> = (0..batch_size as u64)
            .map(|j| {
                let pos = step * batch_size as u64 + j;
                (pos, self.sampler.index_at(pos))
            })
            .collect();
        let images: Vec<Vec<f32>> = positions
            .par_iter()
            .map(|&(pos, idx)| {
                let mut rng = rng_for(self.seed, Stream::Augment, pos);
                let px = &self.set.pixels[idx];
                // Every plane (a mask's too) is cropped and augmented alike.
                train_image(px, px.channels as usize, self.side, self.crop, &self.augment_of(idx), &mut rng)
            })
            .collect();
        self.assemble(images, positions.iter().map(|&(_, i)| i), self.side, self.side)
    }

    /// Batch `step` of a bucketed set: every image of one bucket, cropped to it (centred or at
    /// a drawn offset) and maybe mirrored, the draws made from (seed, step, position in batch).
    fn bucket_batch(&mut self, step: u64, batch_size: usize) -> Batch {
        let (bucket, members) = self.bucket_batches(batch_size).batch(step);
        let drawn: Vec<(Vec<f32>, Placement)> = members
            .par_iter()
            .enumerate()
            .map(|(j, &idx)| {
                let mut rng = rng_for(self.seed, Stream::Augment, step * batch_size as u64 + j as u64);
                bucket_image(&self.set.pixels[idx], &self.set.fits[idx], self.crop, self.augment_of(idx).hflip, &mut rng)
            })
            .collect();
        let (images, placements): (Vec<Vec<f32>>, Vec<Placement>) = drawn.into_iter().unzip();
        let mut batch = self.assemble(images, members.iter().copied(), bucket.height as usize, bucket.width as usize);
        batch.placements = placements;
        batch
    }

    /// The one-bucket batches of the training indices for `batch_size` (the last, partial
    /// batch of a bucket kept: no image is left out of an epoch).
    fn bucket_batches(&mut self, batch_size: usize) -> &mut BucketBatches {
        if self.buckets.as_ref().map(|(b, _)| *b) != Some(batch_size) {
            // Indices listed more than once (subset repeats) are batched that many times.
            let members = self.sampler.indices.iter().map(|&i| (i, self.set.fits[i].bucket));
            self.buckets = Some((batch_size, BucketBatches::of_members(members, batch_size, self.seed, false)));
        }
        &mut self.buckets.as_mut().unwrap_or_else(|| unreachable!("set above")).1
    }

    /// Centre-cropped, unaugmented squares of the model size at the given dataset indices
    /// (validation, evaluation); a bucketed set's images are first resized to that size.
    pub fn fixed_batch(&self, indices: &[usize]) -> Batch {
        let images: Vec<Vec<f32>> = indices
            .par_iter()
            .map(|&idx| {
                let px = &self.set.pixels[idx];
                let rng = &mut rng_for(self.seed, Stream::Augment, 0);
                if px.width.min(px.height) as usize == self.side {
                    return crop_pixels(px, self.side, CropMode::Center, rng);
                }
                crop_pixels(&shorter_side_to(px, self.side as u32), self.side, CropMode::Center, rng)
            })
            .collect();
        self.assemble(images, indices.iter().copied(), self.side, self.side)
    }

    fn channels(&self) -> usize {
        self.set.channels()
    }

    /// The augmentations of image `idx`: the run's, with its subset's flip probability.
    fn augment_of(&self, idx: usize) -> AugmentConfig {
        match self.set.rules(idx).and_then(|r| r.hflip) {
            Some(hflip) => AugmentConfig { hflip, ..self.augment.clone() },
            None => self.augment.clone(),
        }
    }

    fn assemble(&self, images: Vec<Vec<f32>>, indices: impl Iterator<Item = usize>, height: usize, width: usize) -> Batch {
        let indices: Vec<usize> = indices.collect();
        let (labels, captions) = indices.iter().map(|&i| (self.set.labels[i].map_or(-1, |l| l as i64), self.set.captions[i].clone())).unzip();
        let (images, masks) = if self.set.masked { images.into_iter().map(|planes| split_mask(planes, self.channels())).unzip() } else { (images, Vec::new()) };
        let mut batch = Batch::new(images.concat(), labels, captions, self.channels(), height, width);
        batch.masks = masks.concat();
        if !self.set.subset_of.is_empty() {
            batch.caption_rules = indices.iter().map(|&i| self.set.caption_rule(i)).collect();
        }
        batch
    }
}

/// One image of a bucketed set: its bucket's window of the stored (bucket-covering) pixels,
/// centred or at a drawn offset, then mirrored with probability `hflip`; with its placement.
fn bucket_image(px: &Pixels, fit: &Fit, mode: CropMode, hflip: f64, rng: &mut impl Rng) -> (Vec<f32>, Placement) {
    let p = match mode {
        CropMode::Center => center_crop(fit),
        CropMode::Random => crop(fit, Some(&mut *rng)),
    };
    let (w, h) = (p.bucket.width, p.bucket.height);
    let mut img = px.window_to_planar(p.crop_left, p.crop_top, w, h);
    if hflip > 0.0 && rng.random_bool(hflip) {
        mirror_rows(&mut img, w as usize);
        return (img, p.mirrored());
    }
    (img, p)
}

/// One training image: the crop, then the augmentations, every draw from `rng`. Shared by
/// [`Loader`] and the webdataset stream so that both sources give the same pixels.
pub(crate) fn train_image(px: &Pixels, channels: usize, side: usize, crop: CropMode, cfg: &AugmentConfig, rng: &mut impl Rng) -> Vec<f32> {
    let img = crop_pixels(px, side, crop, rng);
    augment(img, channels, side, cfg, rng)
}

/// The `side` x `side` square of a preprocessed image (shorter side = `side`): centred, or at a
/// position drawn from `rng`.
fn crop_pixels(px: &Pixels, side: usize, mode: CropMode, rng: &mut impl Rng) -> Vec<f32> {
    let side = side as u32;
    let (free_x, free_y) = (px.width - side, px.height - side);
    let (x0, y0) = match mode {
        CropMode::Center => (free_x / 2, free_y / 2),
        CropMode::Random => (rng.random_range(0..=free_x), rng.random_range(0..=free_y)),
    };
    px.crop_to_planar(x0, y0, side)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_set(n: usize) -> Arc<ImageSet> {
        let mut set = ImageSet { class_names: vec!["a".into(), "b".into()], ..Default::default() };
        for i in 0..n {
            let px = Pixels { width: 4, height: 4, channels: 1, data: vec![i as u8; 16] };
            set.push(px, Some(i % 2), None, format!("{i}"));
        }
        Arc::new(set)
    }

    #[test]
    fn every_epoch_visits_each_index_once() {
        let mut s = BatchSampler::new((0..10).collect(), 3);
        for epoch in 0..3u64 {
            let mut seen: Vec<usize> = (0..10).map(|j| s.index_at(epoch * 10 + j)).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..10).collect::<Vec<_>>());
        }
    }

    #[test]
    fn balanced_sampling_evens_out_classes() {
        // 90 images of class 0, 10 of class 1.
        let labels: Vec<Option<usize>> = (0..100).map(|i| Some(usize::from(i >= 90))).collect();
        let mut s = BatchSampler::balanced((0..100).collect(), &labels, 1);
        let minority = (0..2000u64).filter(|&p| s.index_at(p) >= 90).count();
        assert!((850..1150).contains(&minority), "{minority} of 2000 draws from the 10% class");
        let mut plain = BatchSampler::new((0..100).collect(), 1);
        assert_eq!((0..2000u64).filter(|&p| plain.index_at(p) >= 90).count(), 200);
    }

    #[test]
    fn a_batch_is_rebuilt_from_its_step_alone() {
        let set = tiny_set(7);
        let mut a = Loader::new(set.clone(), (0..7).collect(), 4, CropMode::Center, AugmentConfig::default(), 9);
        let batches: Vec<Batch> = (0..5).map(|s| a.train_batch(s, 3)).collect();
        // A fresh loader (as after a resume) asked for step 3 directly gives the same batch.
        let mut b = Loader::new(set, (0..7).collect(), 4, CropMode::Center, AugmentConfig::default(), 9);
        assert_eq!(b.train_batch(3, 3), batches[3]);
        assert_eq!(batches[0].images.len(), 3 * 16);
        // Each image's pixels identify its dataset index, and its label follows that index.
        for (j, &label) in batches[0].labels.iter().enumerate() {
            let idx = ((batches[0].images[j * 16] + 1.0) * 127.5).round() as i64;
            assert_eq!(label, idx % 2);
        }
    }
}
