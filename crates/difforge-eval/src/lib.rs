//! Evaluation for difforge: distances between feature distributions (Frechet distance, KID),
//! k-nearest-neighbour manifold metrics (precision, recall, F1, density, coverage), class accuracy,
//! CLIP score, memorisation and consistency checks, the sample judge (a classifier trained on the real data),
//! the evaluation the trainer runs, and the HTML report that shows them.

pub mod cache;
pub mod classes;
pub mod clip_score;
pub mod dataset;
pub mod error;
pub mod evaluate;
pub mod features;
pub mod judge;
pub mod memorisation;
pub mod metrics;
pub mod report;
pub mod sampler_sweep;
pub mod shape_judge;
pub mod training;

pub use error::EvalError;
