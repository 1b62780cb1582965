//! The model crate on real tensors and real files: generation independent of batching, and
//! checkpoints that survive a full disk. One test binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod checkpoint;
mod fuzz_readers;
mod generate;
mod init_device;
mod sd_lora;
mod sd_lora_export;
mod single_file;
mod stable_diffusion;
