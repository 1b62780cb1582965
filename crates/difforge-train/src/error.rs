use difforge_core::ConfigError;
use difforge_model::ModelError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Data(#[from] difforge_data::DataError),
    #[error(transparent)]
    Nn(#[from] difforge_nn::NnError),
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("{0}")]
    Other(String),
}

impl TrainError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io { path: path.into(), source }
    }

    /// The bad input behind this error, if that is what it is.
    pub fn config_error(&self) -> Option<&ConfigError> {
        match self {
            TrainError::Config(e) | TrainError::Data(difforge_data::DataError::Config(e)) => Some(e),
            TrainError::Model(e) => e.config_error(),
            _ => None,
        }
    }
}
