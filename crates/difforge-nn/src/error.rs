use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum NnError {
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("cannot read weights {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("cannot write weights {path}: {reason}")]
    Save { path: PathBuf, reason: String },
}
