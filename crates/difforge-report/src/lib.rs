//! Figures and pages for difforge's reports (evaluation, explanations): PNG plots drawn the same
//! on every machine, and self-contained HTML pages in which every piece of text is escaped.

pub mod html;
pub mod plot;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Data that cannot be drawn (an empty or ragged matrix, too many classes).
    #[error("{0}")]
    Input(String),
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

pub use plot::{confusion_matrix_png, line_chart_png, scatter_png, Series};
