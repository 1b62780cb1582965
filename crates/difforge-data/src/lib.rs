//! Datasets for difforge: where images come from (an image folder, IDX files, the embedded
//! digits sheet, webdataset tar shards streamed from disk), how they are preprocessed and
//! cached, split into train and validation, and assembled into deterministic, resumable,
//! augmented batches.

pub mod augment;
pub mod batch;
pub mod bucket;
pub mod check;
pub mod config;
pub mod error;
pub mod grid;
pub mod image_set;
pub mod mask;
pub mod pixels;
pub mod preprocess;
pub mod shard_writer;
pub mod source;
pub mod split;
pub mod subset;
pub mod synth;

pub use batch::{Batch, BatchSampler, Loader};
pub use bucket::{bucket_set, BucketBatches, BucketConfig, BucketReport, Placement};
pub use config::{AugmentConfig, Balance, ColorMode, CropMode, DataConfig, SourceKind};
pub use error::DataError;
pub use grid::{save_png, PlanarImages};
pub use image_set::{ImageSet, SkippedFile};
pub use pixels::Pixels;
pub use shard_writer::{write_shards, ShardIndex, ShardReport};
pub use source::ShardStream;
pub use split::Split;
pub use subset::{CaptionRule, SubsetConfig};
