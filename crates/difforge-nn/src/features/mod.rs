//! Pretrained feature networks for evaluation metrics, built from weight files in their original
//! PyTorch formats: EfficientNet-Lite0 (the offline default) and the FID Inception-v3.

pub mod efficientnet_lite;
pub mod inception;
