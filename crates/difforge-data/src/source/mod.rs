//! Where images come from. Each source decodes into an [`ImageSet`] of preprocessed pixels.

mod digits;
pub mod folder;
mod idx;
pub mod metadata;
pub mod webdataset;

pub use digits::{load_digits, DIGITS_PNG};
pub use folder::load_folder;
pub use idx::{load_idx, read_idx};
pub use webdataset::ShardStream;

use crate::config::{DataConfig, SourceKind};
use crate::error::DataError;
use crate::image_set::ImageSet;
use crate::preprocess::Preprocess;
use difforge_core::ConfigError;

/// Loads and preprocesses the dataset a `[data]` section describes.
pub fn load(config: &DataConfig) -> Result<ImageSet, DataError> {
    if !config.subsets.is_empty() {
        return crate::subset::load_subsets(config);
    }
    let prep = Preprocess { size: config.image_size, color: config.color_mode(), pad: config.pad, buckets: config.buckets };
    let set = match config.source {
        SourceKind::Digits => load_digits(&prep)?,
        SourceKind::Folder => {
            let path = config.path.as_deref().ok_or(DataError::Config(ConfigError::problem("data.path", "required for data.source = \"folder\"")))?;
            load_folder(path, &prep, config.max_pixels, &config.class_names, &metadata::CaptionSource::of(config), config.mask_source().as_ref())?
        }
        SourceKind::Idx => {
            let path = config.path.as_deref().ok_or(DataError::Config(ConfigError::problem("data.path", "required for data.source = \"idx\"")))?;
            load_idx(path, config.labels_path.as_deref(), &config.class_names, &prep, config.max_pixels)?
        }
        SourceKind::Webdataset => {
            let why = "\"webdataset\": streamed shards are read by ShardStream, not loaded into memory";
            return Err(ConfigError::new("data.source", config.source.name(), why).into());
        }
    };
    Ok(with_instance_prompt(set, config.instance_prompt.as_deref()))
}

/// DreamBooth's instance prompt as every image's caption.
fn with_instance_prompt(mut set: ImageSet, prompt: Option<&str>) -> ImageSet {
    if let Some(p) = prompt {
        set.captions = vec![Some(p.to_string()); set.len()];
    }
    set
}
