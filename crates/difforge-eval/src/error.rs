use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Inputs that cannot be evaluated (too few samples, mismatched feature widths, ...).
    #[error("{0}")]
    Input(String),
    /// A bad flag, config key or value.
    #[error(transparent)]
    Config(#[from] difforge_core::ConfigError),
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error(transparent)]
    Nn(#[from] difforge_nn::NnError),
    #[error(transparent)]
    Model(#[from] difforge_model::ModelError),
    #[error(transparent)]
    Data(#[from] difforge_data::DataError),
    #[error(transparent)]
    Report(#[from] difforge_report::ReportError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl EvalError {
    pub fn read(path: impl AsRef<Path>, e: impl ToString) -> EvalError {
        EvalError::Read { path: path.as_ref().to_path_buf(), reason: e.to_string() }
    }

    pub fn write(path: impl AsRef<Path>, e: impl ToString) -> EvalError {
        EvalError::Write { path: path.as_ref().to_path_buf(), reason: e.to_string() }
    }

    /// The bad input behind this error, if that is what it is.
    pub fn config_error(&self) -> Option<&difforge_core::ConfigError> {
        match self {
            EvalError::Config(e) | EvalError::Data(difforge_data::DataError::Config(e)) => Some(e),
            EvalError::Model(e) => e.config_error(),
            _ => None,
        }
    }
}
