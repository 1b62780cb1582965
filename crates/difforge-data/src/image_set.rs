//! A loaded, preprocessed dataset held in memory: decoding happens once, every epoch after the
//! first reads from here.

use crate::bucket::{BucketReport, Fit};
use crate::pixels::Pixels;
use crate::subset::{CaptionRule, SubsetRules};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A file that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedFile {
    pub path: PathBuf,
    pub reason: String,
}

#[derive(Debug, Clone, Default)]
pub struct ImageSet {
    pub pixels: Vec<Pixels>,
    /// Class index per image (None for unlabelled images).
    pub labels: Vec<Option<usize>>,
    pub captions: Vec<Option<String>>,
    /// A stable identity per image (relative path or source position); splits hash it.
    pub ids: Vec<String>,
    pub class_names: Vec<String>,
    pub skipped: Vec<SkippedFile>,
    /// With aspect-ratio buckets: each image's bucket and the size its pixels were resized to
    /// (one per image; empty without buckets).
    pub fits: Vec<Fit>,
    /// With aspect-ratio buckets: images per bucket, and those dropped (not in the set) and why.
    pub bucket_report: Option<BucketReport>,
    /// With `[[data.subsets]]`: each image's subset (an index into `subset_rules`); empty
    /// without subsets.
    pub subset_of: Vec<usize>,
    pub subset_rules: Vec<SubsetRules>,
    /// Each image's pixels carry a loss mask as their last channel (`data.alpha_mask`,
    /// `data.mask_path`).
    pub masked: bool,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.pixels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pixels.is_empty()
    }

    /// Whether the images are placed in aspect-ratio buckets ([`ImageSet::fits`]).
    pub fn is_bucketed(&self) -> bool {
        !self.fits.is_empty()
    }

    /// What image `i`'s subset changes (None without subsets).
    pub fn rules(&self, i: usize) -> Option<&SubsetRules> {
        self.subset_of.get(i).map(|&k| &self.subset_rules[k])
    }

    /// How image `i`'s caption is treated in training (the run's settings without subsets).
    pub fn caption_rule(&self, i: usize) -> CaptionRule {
        self.rules(i).map_or_else(CaptionRule::default, |r| r.caption)
    }

    /// The training indices with each image listed as many times as its subset repeats it.
    pub fn repeated(&self, indices: &[usize]) -> Vec<usize> {
        indices.iter().flat_map(|&i| std::iter::repeat_n(i, self.rules(i).map_or(1, |r| r.repeats as usize))).collect()
    }

    /// The image channels (1 or 3), a mask channel not counted.
    pub fn channels(&self) -> usize {
        self.pixels.first().map_or(1, |p| p.channels as usize - usize::from(self.masked))
    }

    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Images per class name (unlabelled ones under "(none)").
    pub fn class_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for label in &self.labels {
            let name = label.map_or("(none)".to_string(), |l| self.class_names[l].clone());
            *counts.entry(name).or_insert(0) += 1;
        }
        counts
    }

    pub(crate) fn push(&mut self, pixels: Pixels, label: Option<usize>, caption: Option<String>, id: String) {
        self.pixels.push(pixels);
        self.labels.push(label);
        self.captions.push(caption);
        self.ids.push(id);
    }
}
