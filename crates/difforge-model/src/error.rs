use difforge_core::ConfigError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Data(#[from] difforge_data::DataError),
    #[error(transparent)]
    Nn(#[from] difforge_nn::NnError),
    #[error("{path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// Generation stopped on request before it finished (see `generate_until`).
    #[error("generation was cancelled")]
    Cancelled,
    #[error("{0}")]
    Other(String),
}

impl ModelError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io { path: path.into(), source }
    }

    pub fn checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        ModelError::Checkpoint { path: path.into(), reason: reason.into() }
    }

    /// The bad input at the heart of this error, from whichever crate found it (a config
    /// file's field out of range is the networks' finding, wrapped here).
    pub fn config_error(&self) -> Option<&ConfigError> {
        match self {
            ModelError::Config(e) | ModelError::Nn(difforge_nn::NnError::Config(e)) | ModelError::Data(difforge_data::DataError::Config(e)) => Some(e),
            _ => None,
        }
    }
}
