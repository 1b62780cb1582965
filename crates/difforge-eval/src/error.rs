use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Inputs that cannot be evaluated (too few samples, mismatched feature widths, ...).
    #[error("{0}")]
    Input(String),
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error(transparent)]
    Nn(#[from] difforge_nn::NnError),
}
