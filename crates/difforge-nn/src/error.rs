use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum NnError {
    #[error(transparent)]
    Config(#[from] difforge_core::ConfigError),
    /// Weights or inputs that are not what a network needs.
    #[error("{0}")]
    Invalid(String),
    #[error("cannot read weights {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("cannot write weights {path}: {reason}")]
    Save { path: PathBuf, reason: String },
}
