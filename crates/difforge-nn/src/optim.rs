//! AdamW (decoupled weight decay, PyTorch's update rule) whose state is ours, so that it can be
//! checkpointed and restored exactly (tch's nn::Optimizer hides its state). The diffusion
//! trainer and the sample judge's classifier both train with it.

use crate::error::NnError;
use crate::flat::FlatBuffer;
use difforge_native::{fused_adamw, AdamWStep};
use std::collections::HashMap;
use tch::Tensor;

#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// AdamW over flat buffers: the parameters, their gradients and both moments are each one
/// contiguous buffer (see [`FlatBuffer`]), so an update is one pass of libtorch's fused AdamW
/// kernel (what `torch.optim.AdamW(fused=True)` runs, on CPU and CUDA) whatever the number of
/// parameters, and clipping is one norm and one scale.
pub struct AdamW {
    names: Vec<String>,
    params: FlatBuffer,
    grads: FlatBuffer,
    m: FlatBuffer,
    v: FlatBuffer,
    /// The step number as the fused kernel reads it: a float32 scalar on the parameters' device.
    step_count: Tensor,
    /// Optimiser steps taken (bias correction uses it).
    pub steps: u64,
    cfg: AdamWConfig,
}

impl AdamW {
    /// `named` must be in a stable order (sorted by name), of one dtype on one device, and
    /// require grad. The tensors (and their gradients) become views of the optimiser's buffers.
    pub fn new(named: Vec<(String, Tensor)>, cfg: AdamWConfig) -> Result<AdamW, NnError> {
        let (names, tensors): (Vec<_>, Vec<_>) = named.into_iter().unzip();
        let params = FlatBuffer::adopt(&tensors)?;
        let grads = FlatBuffer::adopt_grads(&tensors)?;
        let (m, v) = (params.zeros_like(), params.zeros_like());
        let step_count = Tensor::zeros([], (tch::Kind::Float, params.data().device()));
        Ok(AdamW { names, params, grads, m, v, step_count, steps: 0, cfg })
    }

    /// The parameters' buffer (what the EMA follows).
    pub fn params(&self) -> &FlatBuffer {
        &self.params
    }

    /// The gradients' buffer (what a data-parallel run all-reduces).
    pub fn grads(&self) -> &FlatBuffer {
        &self.grads
    }

    /// The buffers a data-parallel run copies from rank 0 at start: parameters and both moments.
    pub fn state_buffers(&self) -> [&Tensor; 3] {
        [self.params.data(), self.m.data(), self.v.data()]
    }

    pub fn zero_grad(&mut self) {
        let _ = self.grads.data().shallow_clone().zero_();
    }

    /// The global L2 norm of the gradients (one kernel, one host sync).
    pub fn grad_norm(&self) -> f64 {
        self.grads.data().norm().double_value(&[])
    }

    /// Scales every gradient by `factor` (for clipping).
    pub fn scale_grads(&self, factor: f64) {
        let _ = self.grads.data().shallow_clone().g_mul_scalar_(factor);
    }

    /// One AdamW update at learning rate `lr` (PyTorch's rule: decay, then the Adam step).
    pub fn step(&mut self, lr: f64) -> Result<(), NnError> {
        self.steps += 1;
        let c = self.cfg;
        // Filled on the device, not read back: no host sync.
        let _ = self.step_count.shallow_clone().fill_(self.steps as f64);
        let s = AdamWStep { lr, beta1: c.beta1, beta2: c.beta2, weight_decay: c.weight_decay, eps: c.eps };
        tch::no_grad(|| fused_adamw(self.params.data(), self.grads.data(), self.m.data(), self.v.data(), &self.step_count, s))
            .map_err(|e| NnError::Invalid(format!("AdamW step {}: {e}", self.steps)))
    }

    /// The moments as named tensors (`m.<param>`, `v.<param>`) for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let (m, v) = (self.m.views(), self.v.views());
        let mut out = Vec::with_capacity(2 * self.names.len());
        for ((name, m), v) in self.names.iter().zip(m).zip(v) {
            out.push((format!("m.{name}"), m));
            out.push((format!("v.{name}"), v));
        }
        out
    }

    /// Restores the moments saved by [`AdamW::state`]; every one must be present.
    pub fn load_state(&mut self, named: &HashMap<String, Tensor>, steps: u64) -> Result<(), String> {
        let (m, v) = (self.m.views(), self.v.views());
        tch::no_grad(|| {
            for ((name, m), v) in self.names.iter().zip(m).zip(v) {
                for (prefix, mut dst) in [("m", m), ("v", v)] {
                    let key = format!("{prefix}.{name}");
                    let src = named.get(&key).ok_or_else(|| format!("optimizer state `{key}` is missing"))?;
                    if src.size() != dst.size() {
                        return Err(format!("optimizer state `{key}` has shape {:?}, expected {:?}", src.size(), dst.size()));
                    }
                    dst.copy_(src);
                }
            }
            Ok(())
        })?;
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Matches torch.optim.AdamW(lr=0.1, weight_decay=0.01) on f(x) = sum(x^2) from x = [1, -2]
    /// for three steps (values printed by PyTorch 2.11).
    #[test]
    fn matches_pytorch_adamw() {
        let x = Tensor::from_slice(&[1.0f64, -2.0]).set_requires_grad(true);
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
        let mut opt = AdamW::new(vec![("x".into(), x.shallow_clone())], cfg).unwrap();
        for _ in 0..3 {
            opt.zero_grad();
            (&x * &x).sum(Kind::Double).backward();
            opt.step(0.1).unwrap();
        }
        let got: Vec<f64> = Vec::try_from(&x.to_device(Device::Cpu)).unwrap();
        let want = [EXPECTED[0], EXPECTED[1]];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-9, "{got:?} vs {want:?}");
        }
    }

    const EXPECTED: [f64; 2] = [0.6989111831582322, -1.6949445143849768];
}
