use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a valid IDX file: {reason}")]
    Idx { path: PathBuf, reason: String },
    #[error("no usable image in {path} ({skipped} file(s) skipped as unreadable); expected png, jpg, jpeg, webp or bmp files")]
    NoImages { path: PathBuf, skipped: usize },
    /// A webdataset shard (or its dataset.json) that cannot be read, or a bad entry in it.
    #[error("{path}: {reason}")]
    Shard { path: PathBuf, reason: String },
    /// A folder's metadata.jsonl or metadata.csv that cannot be used; the reason names the line.
    #[error("{path}: {reason}")]
    Metadata { path: PathBuf, reason: String },
    #[error("cannot decode the embedded digits sheet: {0}")]
    Embedded(String),
    #[error(transparent)]
    Config(#[from] difforge_core::ConfigError),
}

impl DataError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io { path: path.into(), source }
    }

    pub fn metadata(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        DataError::Metadata { path: path.into(), reason: reason.to_string() }
    }

    pub fn shard(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        DataError::Shard { path: path.into(), reason: reason.to_string() }
    }
}
