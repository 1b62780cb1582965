//! AdamW (decoupled weight decay, PyTorch's update rule) whose state is ours, so that it can be
//! checkpointed and restored exactly (tch's nn::Optimizer hides its state). The diffusion
//! trainer and the sample judge's classifier both train with it.

use tch::Tensor;

#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

pub struct AdamW {
    names: Vec<String>,
    params: Vec<Tensor>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Optimiser steps taken (bias correction uses it).
    pub steps: u64,
    cfg: AdamWConfig,
}

impl AdamW {
    /// `named` must be in a stable order (sorted by name).
    pub fn new(named: Vec<(String, Tensor)>, cfg: AdamWConfig) -> AdamW {
        let (names, params): (Vec<_>, Vec<_>) = named.into_iter().unzip();
        let m = params.iter().map(Tensor::zeros_like).collect();
        let v = params.iter().map(Tensor::zeros_like).collect();
        AdamW { names, params, m, v, steps: 0, cfg }
    }

    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    pub fn grads(&self) -> Vec<Tensor> {
        self.params.iter().map(Tensor::grad).filter(Tensor::defined).collect()
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
    }

    /// The global L2 norm of the gradients (one host sync).
    pub fn grad_norm(&self) -> f64 {
        let norms: Vec<Tensor> = self.grads().iter().map(|g| g.norm()).collect();
        if norms.is_empty() {
            return 0.0;
        }
        Tensor::stack(&norms, 0).norm().double_value(&[])
    }

    /// Scales every gradient by `factor` (for clipping).
    pub fn scale_grads(&self, factor: f64) {
        tch::no_grad(|| {
            for mut g in self.grads() {
                let _ = g.g_mul_scalar_(factor);
            }
        });
    }

    /// One AdamW update at learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        self.steps += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.steps as i32);
        let bc2 = 1.0 - c.beta2.powi(self.steps as i32);
        tch::no_grad(|| {
            for ((p, m), v) in self.params.iter_mut().zip(&mut self.m).zip(&mut self.v) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                if c.weight_decay > 0.0 {
                    let _ = p.g_mul_scalar_(1.0 - lr * c.weight_decay);
                }
                let _ = m.lerp_(&g, 1.0 - c.beta1);
                let _ = v.g_mul_scalar_(c.beta2);
                let _ = v.addcmul_(&(&g * (1.0 - c.beta2)), &g);
                let denom = (&*v / bc2).sqrt() + c.eps;
                let _ = p.addcdiv_(&(&*m * (-lr / bc1)), &denom);
            }
        });
    }

    /// The moments as named tensors (`m.<param>`, `v.<param>`) for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.names.len());
        for (i, name) in self.names.iter().enumerate() {
            out.push((format!("m.{name}"), self.m[i].shallow_clone()));
            out.push((format!("v.{name}"), self.v[i].shallow_clone()));
        }
        out
    }

    /// Restores the moments saved by [`AdamW::state`]; every one must be present.
    pub fn load_state(&mut self, named: &std::collections::HashMap<String, Tensor>, steps: u64) -> Result<(), String> {
        tch::no_grad(|| {
            for (i, name) in self.names.iter().enumerate() {
                for (prefix, dst) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
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
        let mut opt = AdamW::new(vec![("x".into(), x.shallow_clone())], cfg);
        for _ in 0..3 {
            opt.zero_grad();
            (&x * &x).sum(Kind::Double).backward();
            opt.step(0.1);
        }
        let got: Vec<f64> = Vec::try_from(&x.to_device(Device::Cpu)).unwrap();
        let want = [EXPECTED[0], EXPECTED[1]];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-9, "{got:?} vs {want:?}");
        }
    }

    const EXPECTED: [f64; 2] = [0.6989111831582322, -1.6949445143849768];
}
