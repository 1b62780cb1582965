//! The difforge trainer: the training loop, one optimiser step (shared with the benchmark), the
//! training loss, learning-rate schedule and EMA, the run's records, prior preservation for
//! fine-tunes, data-parallel training over c10d, hyperparameter sweeps and throughput benchmarks. The model, its checkpoints and
//! generation live in difforge-model; the config in difforge-config.

pub mod bench;
pub mod data;
pub mod ema;
pub mod error;
pub mod graph_step;
mod kohya_record;
pub mod logs;
pub mod loss;
pub mod lr;
pub mod metrics;
pub mod new_model;
pub mod parallel;
mod prefetch;
pub mod previews;
pub mod prior;
pub mod rank_gpu;
pub mod run_folder;
pub mod step;
pub mod sweep;
pub mod tensorboard;
pub mod trainer;
pub mod vae;
pub mod world;

pub use error::TrainError;
pub use trainer::{train, Evaluate, TrainOptions, TrainSummary};
