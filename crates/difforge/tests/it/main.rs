//! End-to-end tests of the real `difforge` binary on real files, one module per area. One test
//! binary, so libtorch is linked once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod bad_input;
mod bench;
mod cli;
mod convert;
mod cuda_graphs;
mod data_check;
mod data_shard;
mod distributed;
mod eval;
mod explain;
mod finetune;
mod hostile_files;
mod launch;
mod precision;
mod reproducibility;
mod run_folder;
mod sd_buckets;
mod sd_finetune;
mod sd_lora_coverage;
mod sd_masked_loss;
mod sd_merge;
mod sd_previews;
mod sd_scratch;
mod sd_single_file_base;
mod sd_subsets;
mod sd_zero_snr;
mod serve;
mod serve_hardening;
mod serve_published;
mod stability;
mod synth_shapes;
mod tensorboard;
mod text_to_image;
mod training_options;
mod vae_train;
