//! The difforge trainer: the run config, the training loop with its optimiser, LR schedule and
//! EMA, checkpoints and resume, sampling from a trained model, and the sample judge
//! (a classifier trained on the real data).

pub mod adapter;
pub mod bench;
pub mod checkpoint;
pub mod classifier;
pub mod config;
pub mod device;
pub mod ema;
pub mod error;
pub mod evaluator;
pub mod generate;
pub mod lr;
pub mod metrics;
pub mod model;
pub mod optimizer;
pub mod prior;
pub mod progress;
pub mod sweep;
pub mod trainer;
pub mod validation;

pub use config::{Precision, RunConfig, TrainConfig};
pub use error::TrainError;
pub use model::DiffusionModel;
pub use trainer::{train, TrainOptions, TrainSummary};
