//! The run config: one TOML file with sections [data], [model], [diffusion], [train], [sample],
//! [finetune] and [lora]. Every field has a default; unknown keys are rejected; `--set a.b=value`
//! overrides any field; every error is a [`ConfigError`] naming the key, the value and what was
//! expected. The config of a run is also the recipe of its model: every checkpoint carries it.

pub mod device;
pub mod finetune;
pub mod model;
pub mod new_sd_model;
pub mod overrides;
mod public;
pub mod run;
pub mod stable_diffusion;
pub mod suggest;
pub mod train;
pub mod vae;

pub use device::DeviceChoice;
pub use difforge_core::ConfigError;
pub use finetune::FinetuneConfig;
pub use model::{ModelConfig, ModelFamily};
pub use new_sd_model::{NewSdModel, NewTokenizer};
pub use overrides::{apply_set, deep_merge, fill_missing, GivenOverDefault};
pub use run::{no_model_defaults, FindDefaults, ModelDefaults, RunConfig, DEFAULT_CONFIG};
pub use stable_diffusion::StableDiffusionConfig;
pub use train::{eval_metric, CpuKernels, DistBackend, ExportFormat, LogTarget, LrSchedule, MetricMode, Precision, TrainConfig, EVAL_METRICS};
pub use vae::{ReconstructionLoss, VaeConfig, VaeRunConfig};
