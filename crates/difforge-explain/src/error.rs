use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(transparent)]
    Model(#[from] difforge_model::ModelError),
    #[error(transparent)]
    Report(#[from] difforge_report::ReportError),
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("cannot draw {what}: {reason}")]
    Draw { what: &'static str, reason: String },
}

impl ExplainError {
    pub fn write(path: &Path, e: impl ToString) -> ExplainError {
        ExplainError::Write { path: path.to_path_buf(), reason: e.to_string() }
    }

    pub fn draw(what: &'static str, e: impl ToString) -> ExplainError {
        ExplainError::Draw { what, reason: e.to_string() }
    }
}
