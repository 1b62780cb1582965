//! Sample-quality evaluation during training. The trainer calls an [`Evaluator`] every
//! `train.eval_every` steps, logs what it returns to `eval.jsonl`, and early stopping may watch
//! any of those metrics (`train.early_stop_metric = "eval.fd_effnet"`, ...). The implementation
//! (feature networks, metrics) lives in difforge-eval, which depends on this crate, so the
//! trainer only knows this trait.

use crate::model::DiffusionModel;

pub trait Evaluator {
    /// Metric name and value for the model as it is at `step`; the names are [`METRICS`].
    fn evaluate(&self, model: &DiffusionModel, step: u64) -> Result<Vec<(String, f64)>, String>;
}

/// Metrics an evaluator reports (fid only with Inception weights, class_accuracy only with a
/// classifier), and whether higher is better.
pub const METRICS: [(&str, bool); 9] = [
    ("fd_effnet", false),
    ("fid", false),
    ("kid", false),
    ("precision", true),
    ("recall", true),
    ("f1", true),
    ("density", true),
    ("coverage", true),
    ("class_accuracy", true),
];

/// For `eval.NAME`: whether NAME is known and higher is better.
pub fn eval_metric(early_stop_metric: &str) -> Option<(&'static str, bool)> {
    let name = early_stop_metric.strip_prefix("eval.")?;
    METRICS.iter().find(|(m, _)| *m == name).copied()
}
