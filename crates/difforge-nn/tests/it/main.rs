//! Networks against their references: EfficientNet-Lite0 and the FID Inception-v3 against
//! PyTorch, and the torch.save reader on files torch wrote. One test binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod efficientnet_lite;
mod inception_parity;
mod sd_bin;
mod sd_clip;
mod sd_device;
mod sd_reference;
mod sd_t5;
mod sd_tokenizer;
mod sd_unet;
mod sd_vae;
mod torch_pickle;
