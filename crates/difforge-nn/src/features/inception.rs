//! The FID Inception-v3: the network the Fréchet Inception Distance is defined with, exactly as
//! pytorch-fid 0.3.0 builds it (`InceptionV3([3], resize_input=True, normalize_input=True,
//! use_fid_inception=True)`, i.e. `fid_inception_v3()` cut after its final average pool).
//!
//! FID numbers are only comparable with published ones when every detail matches, so this
//! follows pytorch-fid op for op rather than torchvision's Inception-v3:
//! - the input is resized bilinearly to 299x299 (align_corners=False, no antialiasing) and
//!   mapped from [0, 1] to [-1, 1];
//! - every convolution is a `BasicConv2d` (conv without bias, BatchNorm with eps=0.001 using its
//!   running statistics, ReLU);
//! - the pooling branches of the A, C and first E blocks average without counting the zero
//!   padding (`count_include_pad=False`, as TensorFlow did), and the last E block max-pools there
//!   (a quirk of the TensorFlow graph the weights come from);
//! - the 1008-class `fc` is never used: the features are the 2048 channels after the adaptive
//!   average pool.
//!
//! Weights are the state dict of `fid_inception_v3()` under its own key names
//! (`pt_inception-2015-12-05-6726825d.pth`). Keys and shapes are checked strictly so that, for
//! instance, torchvision's ImageNet Inception weights (same main key names, but with `AuxLogits`
//! and 1000 classes) are refused instead of silently giving different FIDs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use crate::NnError;

/// Side of the square pytorch-fid resizes every input to.
const INPUT_SIZE: i64 = 299;
/// BatchNorm epsilon of the TensorFlow graph (PyTorch's default would be 1e-5).
const BN_EPS: f64 = 1e-3;
/// Classes of the unused classifier head of the FID weights (TensorFlow's 1008, not ImageNet's
/// 1000: the shape tells the FID weights from torchvision's).
const FC_CLASSES: i64 = 1008;
/// Length of one image's feature vector.
pub const FEATURE_DIM: i64 = 2048;

/// The FID Inception-v3 in eval mode, holding its weights as plain tensors.
#[derive(Debug)]
pub struct FidInception {
    conv2d_1a_3x3: BasicConv2d,
    conv2d_2a_3x3: BasicConv2d,
    conv2d_2b_3x3: BasicConv2d,
    conv2d_3b_1x1: BasicConv2d,
    conv2d_4a_3x3: BasicConv2d,
    mixed_5b: InceptionA,
    mixed_5c: InceptionA,
    mixed_5d: InceptionA,
    mixed_6a: InceptionB,
    mixed_6b: InceptionC,
    mixed_6c: InceptionC,
    mixed_6d: InceptionC,
    mixed_6e: InceptionC,
    mixed_7a: InceptionD,
    mixed_7b: InceptionE,
    mixed_7c: InceptionE,
    device: Device,
}

impl FidInception {
    /// Reads pytorch-fid's weight file (`pt_inception-2015-12-05-6726825d.pth`, or any torch.save
    /// file holding the same state dict) onto `device`.
    pub fn load(path: &Path, device: Device) -> Result<Self, NnError> {
        let tensors = crate::torch_pickle::load(path)?;
        Self::build(tensors, device).map_err(|reason| NnError::Load { path: path.to_path_buf(), reason })
    }

    /// Builds the network from the state dict of `fid_inception_v3()` (key names as in
    /// pytorch-fid's weight file). Every weight must be present with its exact shape; `fc.*` and
    /// BatchNorm `num_batches_tracked` counters may be present and are ignored; any other key is
    /// refused, since it means these are not the FID weights.
    pub fn from_state_dict(tensors: Vec<(String, Tensor)>, device: Device) -> Result<Self, NnError> {
        Self::build(tensors, device).map_err(|reason| NnError::Load { path: PathBuf::from("<state dict>"), reason })
    }

    fn build(tensors: Vec<(String, Tensor)>, device: Device) -> Result<Self, String> {
        let mut sd = StateDict::new(tensors, device)?;
        let sd = &mut sd;
        let net = FidInception {
            conv2d_1a_3x3: BasicConv2d::load(sd, "Conv2d_1a_3x3", Conv::new(3, 32, [3, 3]).stride(2))?,
            conv2d_2a_3x3: BasicConv2d::load(sd, "Conv2d_2a_3x3", Conv::new(32, 32, [3, 3]))?,
            conv2d_2b_3x3: BasicConv2d::load(sd, "Conv2d_2b_3x3", Conv::new(32, 64, [3, 3]).padding([1, 1]))?,
            conv2d_3b_1x1: BasicConv2d::load(sd, "Conv2d_3b_1x1", Conv::new(64, 80, [1, 1]))?,
            conv2d_4a_3x3: BasicConv2d::load(sd, "Conv2d_4a_3x3", Conv::new(80, 192, [3, 3]))?,
            mixed_5b: InceptionA::load(sd, "Mixed_5b", 192, 32)?,
            mixed_5c: InceptionA::load(sd, "Mixed_5c", 256, 64)?,
            mixed_5d: InceptionA::load(sd, "Mixed_5d", 288, 64)?,
            mixed_6a: InceptionB::load(sd, "Mixed_6a", 288)?,
            mixed_6b: InceptionC::load(sd, "Mixed_6b", 768, 128)?,
            mixed_6c: InceptionC::load(sd, "Mixed_6c", 768, 160)?,
            mixed_6d: InceptionC::load(sd, "Mixed_6d", 768, 160)?,
            mixed_6e: InceptionC::load(sd, "Mixed_6e", 768, 192)?,
            mixed_7a: InceptionD::load(sd, "Mixed_7a", 768)?,
            mixed_7b: InceptionE::load(sd, "Mixed_7b", 1280, PoolKind::Average)?,
            mixed_7c: InceptionE::load(sd, "Mixed_7c", 2048, PoolKind::Max)?,
            device,
        };
        sd.check_rest()?;
        Ok(net)
    }

    /// The device the weights live on; [`FidInception::features`] computes and returns there.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The 2048-d pool features of `images` (N x 3 x H x W, any H and W, values in [0, 1], any
    /// float kind, any device): an N x 2048 f32 tensor on [`FidInception::device`], computed
    /// without gradients.
    ///
    /// # Panics
    /// If `images` is not a 4-d tensor with 3 channels (a caller's bug, not a data condition).
    pub fn features(&self, images: &Tensor) -> Tensor {
        let size = images.size();
        assert!(size.len() == 4 && size[1] == 3, "FID Inception expects N x 3 x H x W images, got {size:?}");
        tch::no_grad(|| {
            let x = images.to_device(self.device).to_kind(Kind::Float);
            let x = x.upsample_bilinear2d([INPUT_SIZE, INPUT_SIZE], false, None, None);
            let x = x * 2.0 - 1.0;
            // Block 0: up to the first max pool.
            let x = self.conv2d_1a_3x3.forward(&x);
            let x = self.conv2d_2a_3x3.forward(&x);
            let x = self.conv2d_2b_3x3.forward(&x);
            let x = max_pool_3x3_stride2(&x);
            // Block 1: up to the second max pool.
            let x = self.conv2d_3b_1x1.forward(&x);
            let x = self.conv2d_4a_3x3.forward(&x);
            let x = max_pool_3x3_stride2(&x);
            // Block 2: up to where the auxiliary classifier would branch off.
            let x = self.mixed_5b.forward(&x);
            let x = self.mixed_5c.forward(&x);
            let x = self.mixed_5d.forward(&x);
            let x = self.mixed_6a.forward(&x);
            let x = self.mixed_6b.forward(&x);
            let x = self.mixed_6c.forward(&x);
            let x = self.mixed_6d.forward(&x);
            let x = self.mixed_6e.forward(&x);
            // Block 3: up to the final average pool.
            let x = self.mixed_7a.forward(&x);
            let x = self.mixed_7b.forward(&x);
            let x = self.mixed_7c.forward(&x);
            x.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
        })
    }
}

/// Shape of one `BasicConv2d`, written like torchvision's `conv_block(...)` calls.
#[derive(Debug, Clone, Copy)]
struct Conv {
    in_channels: i64,
    out_channels: i64,
    kernel: [i64; 2],
    stride: i64,
    padding: [i64; 2],
}

impl Conv {
    fn new(in_channels: i64, out_channels: i64, kernel: [i64; 2]) -> Self {
        Conv { in_channels, out_channels, kernel, stride: 1, padding: [0, 0] }
    }

    fn stride(self, stride: i64) -> Self {
        Conv { stride, ..self }
    }

    fn padding(self, padding: [i64; 2]) -> Self {
        Conv { padding, ..self }
    }
}

/// Convolution without bias, eval-mode BatchNorm (eps 0.001), ReLU.
#[derive(Debug)]
struct BasicConv2d {
    conv_weight: Tensor,
    bn_weight: Tensor,
    bn_bias: Tensor,
    bn_running_mean: Tensor,
    bn_running_var: Tensor,
    stride: i64,
    padding: [i64; 2],
}

impl BasicConv2d {
    fn load(sd: &mut StateDict, prefix: &str, c: Conv) -> Result<Self, String> {
        let channels = [c.out_channels];
        Ok(BasicConv2d {
            conv_weight: sd.take(&format!("{prefix}.conv.weight"), &[c.out_channels, c.in_channels, c.kernel[0], c.kernel[1]])?,
            bn_weight: sd.take(&format!("{prefix}.bn.weight"), &channels)?,
            bn_bias: sd.take(&format!("{prefix}.bn.bias"), &channels)?,
            bn_running_mean: sd.take(&format!("{prefix}.bn.running_mean"), &channels)?,
            bn_running_var: sd.take(&format!("{prefix}.bn.running_var"), &channels)?,
            stride: c.stride,
            padding: c.padding,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        // Convolution and BatchNorm stay separate ops (no folding) so that rounding matches
        // pytorch-fid's eval-mode forward.
        let y = x.conv2d(&self.conv_weight, None::<Tensor>, [self.stride, self.stride], self.padding, [1, 1], 1);
        y.batch_norm(Some(&self.bn_weight), Some(&self.bn_bias), Some(&self.bn_running_mean), Some(&self.bn_running_var), false, 0.1, BN_EPS, true).relu()
    }
}

/// FIDInceptionA (Mixed_5b/c/d): 1x1, 5x5, double 3x3 and pool branches.
#[derive(Debug)]
struct InceptionA {
    branch1x1: BasicConv2d,
    branch5x5_1: BasicConv2d,
    branch5x5_2: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3: BasicConv2d,
    branch_pool: BasicConv2d,
}

impl InceptionA {
    fn load(sd: &mut StateDict, prefix: &str, cin: i64, pool_features: i64) -> Result<Self, String> {
        let mut conv = |name: &str, c: Conv| BasicConv2d::load(sd, &format!("{prefix}.{name}"), c);
        Ok(InceptionA {
            branch1x1: conv("branch1x1", Conv::new(cin, 64, [1, 1]))?,
            branch5x5_1: conv("branch5x5_1", Conv::new(cin, 48, [1, 1]))?,
            branch5x5_2: conv("branch5x5_2", Conv::new(48, 64, [5, 5]).padding([2, 2]))?,
            branch3x3dbl_1: conv("branch3x3dbl_1", Conv::new(cin, 64, [1, 1]))?,
            branch3x3dbl_2: conv("branch3x3dbl_2", Conv::new(64, 96, [3, 3]).padding([1, 1]))?,
            branch3x3dbl_3: conv("branch3x3dbl_3", Conv::new(96, 96, [3, 3]).padding([1, 1]))?,
            branch_pool: conv("branch_pool", Conv::new(cin, pool_features, [1, 1]))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let b1 = self.branch1x1.forward(x);
        let b5 = self.branch5x5_2.forward(&self.branch5x5_1.forward(x));
        let b3 = self.branch3x3dbl_1.forward(x);
        let b3 = self.branch3x3dbl_3.forward(&self.branch3x3dbl_2.forward(&b3));
        let bp = self.branch_pool.forward(&avg_pool_3x3_same(x));
        Tensor::cat(&[b1, b5, b3, bp], 1)
    }
}

/// InceptionB (Mixed_6a, torchvision's unpatched block): strided 3x3, double 3x3 and max pool
/// branches, halving the resolution.
#[derive(Debug)]
struct InceptionB {
    branch3x3: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3: BasicConv2d,
}

impl InceptionB {
    fn load(sd: &mut StateDict, prefix: &str, cin: i64) -> Result<Self, String> {
        let mut conv = |name: &str, c: Conv| BasicConv2d::load(sd, &format!("{prefix}.{name}"), c);
        Ok(InceptionB {
            branch3x3: conv("branch3x3", Conv::new(cin, 384, [3, 3]).stride(2))?,
            branch3x3dbl_1: conv("branch3x3dbl_1", Conv::new(cin, 64, [1, 1]))?,
            branch3x3dbl_2: conv("branch3x3dbl_2", Conv::new(64, 96, [3, 3]).padding([1, 1]))?,
            branch3x3dbl_3: conv("branch3x3dbl_3", Conv::new(96, 96, [3, 3]).stride(2))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let b3 = self.branch3x3.forward(x);
        let bd = self.branch3x3dbl_1.forward(x);
        let bd = self.branch3x3dbl_3.forward(&self.branch3x3dbl_2.forward(&bd));
        let bp = max_pool_3x3_stride2(x);
        Tensor::cat(&[b3, bd, bp], 1)
    }
}

/// FIDInceptionC (Mixed_6b..e): 1x1, factorised 7x7, double factorised 7x7 and pool branches.
#[derive(Debug)]
struct InceptionC {
    branch1x1: BasicConv2d,
    branch7x7_1: BasicConv2d,
    branch7x7_2: BasicConv2d,
    branch7x7_3: BasicConv2d,
    branch7x7dbl_1: BasicConv2d,
    branch7x7dbl_2: BasicConv2d,
    branch7x7dbl_3: BasicConv2d,
    branch7x7dbl_4: BasicConv2d,
    branch7x7dbl_5: BasicConv2d,
    branch_pool: BasicConv2d,
}

impl InceptionC {
    fn load(sd: &mut StateDict, prefix: &str, cin: i64, c7: i64) -> Result<Self, String> {
        let mut conv = |name: &str, c: Conv| BasicConv2d::load(sd, &format!("{prefix}.{name}"), c);
        let row = |i, o| Conv::new(i, o, [1, 7]).padding([0, 3]);
        let col = |i, o| Conv::new(i, o, [7, 1]).padding([3, 0]);
        Ok(InceptionC {
            branch1x1: conv("branch1x1", Conv::new(cin, 192, [1, 1]))?,
            branch7x7_1: conv("branch7x7_1", Conv::new(cin, c7, [1, 1]))?,
            branch7x7_2: conv("branch7x7_2", row(c7, c7))?,
            branch7x7_3: conv("branch7x7_3", col(c7, 192))?,
            branch7x7dbl_1: conv("branch7x7dbl_1", Conv::new(cin, c7, [1, 1]))?,
            branch7x7dbl_2: conv("branch7x7dbl_2", col(c7, c7))?,
            branch7x7dbl_3: conv("branch7x7dbl_3", row(c7, c7))?,
            branch7x7dbl_4: conv("branch7x7dbl_4", col(c7, c7))?,
            branch7x7dbl_5: conv("branch7x7dbl_5", row(c7, 192))?,
            branch_pool: conv("branch_pool", Conv::new(cin, 192, [1, 1]))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let b1 = self.branch1x1.forward(x);
        let b7 = self.branch7x7_1.forward(x);
        let b7 = self.branch7x7_3.forward(&self.branch7x7_2.forward(&b7));
        let bd = self.branch7x7dbl_1.forward(x);
        let bd = self.branch7x7dbl_2.forward(&bd);
        let bd = self.branch7x7dbl_3.forward(&bd);
        let bd = self.branch7x7dbl_4.forward(&bd);
        let bd = self.branch7x7dbl_5.forward(&bd);
        let bp = self.branch_pool.forward(&avg_pool_3x3_same(x));
        Tensor::cat(&[b1, b7, bd, bp], 1)
    }
}

/// InceptionD (Mixed_7a, torchvision's unpatched block): strided 3x3, factorised 7x7 then
/// strided 3x3, and max pool branches, halving the resolution.
#[derive(Debug)]
struct InceptionD {
    branch3x3_1: BasicConv2d,
    branch3x3_2: BasicConv2d,
    branch7x7x3_1: BasicConv2d,
    branch7x7x3_2: BasicConv2d,
    branch7x7x3_3: BasicConv2d,
    branch7x7x3_4: BasicConv2d,
}

impl InceptionD {
    fn load(sd: &mut StateDict, prefix: &str, cin: i64) -> Result<Self, String> {
        let mut conv = |name: &str, c: Conv| BasicConv2d::load(sd, &format!("{prefix}.{name}"), c);
        Ok(InceptionD {
            branch3x3_1: conv("branch3x3_1", Conv::new(cin, 192, [1, 1]))?,
            branch3x3_2: conv("branch3x3_2", Conv::new(192, 320, [3, 3]).stride(2))?,
            branch7x7x3_1: conv("branch7x7x3_1", Conv::new(cin, 192, [1, 1]))?,
            branch7x7x3_2: conv("branch7x7x3_2", Conv::new(192, 192, [1, 7]).padding([0, 3]))?,
            branch7x7x3_3: conv("branch7x7x3_3", Conv::new(192, 192, [7, 1]).padding([3, 0]))?,
            branch7x7x3_4: conv("branch7x7x3_4", Conv::new(192, 192, [3, 3]).stride(2))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let b3 = self.branch3x3_2.forward(&self.branch3x3_1.forward(x));
        let b7 = self.branch7x7x3_1.forward(x);
        let b7 = self.branch7x7x3_2.forward(&b7);
        let b7 = self.branch7x7x3_3.forward(&b7);
        let b7 = self.branch7x7x3_4.forward(&b7);
        let bp = max_pool_3x3_stride2(x);
        Tensor::cat(&[b3, b7, bp], 1)
    }
}

/// Which pooling the pool branch of an E block uses before its 1x1 convolution.
#[derive(Debug, Clone, Copy)]
enum PoolKind {
    /// FIDInceptionE_1 (Mixed_7b): average without the padding.
    Average,
    /// FIDInceptionE_2 (Mixed_7c): max pool, as in the TensorFlow graph.
    Max,
}

/// FIDInceptionE_1 / FIDInceptionE_2 (Mixed_7b/c): 1x1, split 3x3, double split 3x3 and pool
/// branches.
#[derive(Debug)]
struct InceptionE {
    branch1x1: BasicConv2d,
    branch3x3_1: BasicConv2d,
    branch3x3_2a: BasicConv2d,
    branch3x3_2b: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3a: BasicConv2d,
    branch3x3dbl_3b: BasicConv2d,
    branch_pool: BasicConv2d,
    pool: PoolKind,
}

impl InceptionE {
    fn load(sd: &mut StateDict, prefix: &str, cin: i64, pool: PoolKind) -> Result<Self, String> {
        let mut conv = |name: &str, c: Conv| BasicConv2d::load(sd, &format!("{prefix}.{name}"), c);
        let row = |i, o| Conv::new(i, o, [1, 3]).padding([0, 1]);
        let col = |i, o| Conv::new(i, o, [3, 1]).padding([1, 0]);
        Ok(InceptionE {
            branch1x1: conv("branch1x1", Conv::new(cin, 320, [1, 1]))?,
            branch3x3_1: conv("branch3x3_1", Conv::new(cin, 384, [1, 1]))?,
            branch3x3_2a: conv("branch3x3_2a", row(384, 384))?,
            branch3x3_2b: conv("branch3x3_2b", col(384, 384))?,
            branch3x3dbl_1: conv("branch3x3dbl_1", Conv::new(cin, 448, [1, 1]))?,
            branch3x3dbl_2: conv("branch3x3dbl_2", Conv::new(448, 384, [3, 3]).padding([1, 1]))?,
            branch3x3dbl_3a: conv("branch3x3dbl_3a", row(384, 384))?,
            branch3x3dbl_3b: conv("branch3x3dbl_3b", col(384, 384))?,
            branch_pool: conv("branch_pool", Conv::new(cin, 192, [1, 1]))?,
            pool,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let b1 = self.branch1x1.forward(x);
        let b3 = self.branch3x3_1.forward(x);
        let b3 = Tensor::cat(&[self.branch3x3_2a.forward(&b3), self.branch3x3_2b.forward(&b3)], 1);
        let bd = self.branch3x3dbl_2.forward(&self.branch3x3dbl_1.forward(x));
        let bd = Tensor::cat(&[self.branch3x3dbl_3a.forward(&bd), self.branch3x3dbl_3b.forward(&bd)], 1);
        let pooled = match self.pool {
            PoolKind::Average => avg_pool_3x3_same(x),
            PoolKind::Max => x.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false),
        };
        let bp = self.branch_pool.forward(&pooled);
        Tensor::cat(&[b1, b3, bd, bp], 1)
    }
}

/// The FID blocks' 3x3 average pool that keeps the size and, like TensorFlow, divides by the
/// number of real (unpadded) pixels under the window.
fn avg_pool_3x3_same(x: &Tensor) -> Tensor {
    x.avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None)
}

/// The stem's and the reduction blocks' 3x3 stride-2 max pool without padding.
fn max_pool_3x3_stride2(x: &Tensor) -> Tensor {
    x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false)
}

/// The named tensors being consumed while the network is built, so that leftovers (keys the
/// FID network does not have) can be reported at the end.
struct StateDict {
    tensors: HashMap<String, Tensor>,
    device: Device,
}

impl StateDict {
    fn new(tensors: Vec<(String, Tensor)>, device: Device) -> Result<Self, String> {
        let mut map = HashMap::with_capacity(tensors.len());
        for (name, tensor) in tensors {
            if map.insert(name.clone(), tensor).is_some() {
                return Err(format!("tensor {name} appears twice"));
            }
        }
        Ok(StateDict { tensors: map, device })
    }

    /// Removes `key`, checks its shape and returns it as f32 on the target device.
    fn take(&mut self, key: &str, shape: &[i64]) -> Result<Tensor, String> {
        let tensor =
            self.tensors.remove(key).ok_or_else(|| format!("missing tensor {key} (expected shape {shape:?}); is this the FID Inception state dict?"))?;
        let actual = tensor.size();
        if actual != shape {
            return Err(format!("tensor {key} has shape {actual:?}, expected {shape:?}"));
        }
        if !tensor.is_floating_point() {
            return Err(format!("tensor {key} has kind {:?}, expected a float kind", tensor.kind()));
        }
        Ok(tensor.to_kind(Kind::Float).to_device(self.device))
    }

    /// Fails on keys the FID network does not use, except the classifier head and BatchNorm's
    /// step counters, which the weight file carries but the features do not need.
    fn check_rest(&mut self) -> Result<(), String> {
        for (key, shape) in [("fc.weight", vec![FC_CLASSES, FEATURE_DIM]), ("fc.bias", vec![FC_CLASSES])] {
            if let Some(tensor) = self.tensors.remove(key) {
                if tensor.size() != shape {
                    return Err(format!(
                        "tensor {key} has shape {:?}, expected {shape:?} (the FID weights have {FC_CLASSES} classes; \
                         torchvision's ImageNet Inception has 1000 and gives different FIDs)",
                        tensor.size()
                    ));
                }
            }
        }
        let mut unexpected: Vec<&String> = self.tensors.keys().filter(|key| !key.ends_with(".bn.num_batches_tracked")).collect();
        if unexpected.is_empty() {
            return Ok(());
        }
        unexpected.sort();
        let shown: Vec<&str> = unexpected.iter().take(5).map(|key| key.as_str()).collect();
        Err(format!("{} unexpected tensor(s), e.g. {}; these are not the FID Inception weights", unexpected.len(), shown.join(", ")))
    }
}
