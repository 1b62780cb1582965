//! libtorch's fused AdamW kernel (what `torch.optim.AdamW(fused=True)` runs).

use crate::{check, ffi, NativeError};
use tch::{Kind, Tensor};

/// The numbers of one AdamW step.
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    pub eps: f64,
}

/// Updates `param` and the moments in place from `grad`, in one pass. `step` is a float32
/// scalar on the parameters' device holding the number of this step (1 for the first), as
/// PyTorch's fused optimisers keep it. All tensors must share dtype (`step` aside), device and
/// shape.
pub fn fused_adamw(param: &Tensor, grad: &Tensor, exp_avg: &Tensor, exp_avg_sq: &Tensor, step: &Tensor, s: AdamWStep) -> Result<(), NativeError> {
    let same = |t: &Tensor| t.size() == param.size() && t.kind() == param.kind() && t.device() == param.device();
    if !(same(grad) && same(exp_avg) && same(exp_avg_sq)) {
        return Err(NativeError("fused AdamW: parameter, gradient and moments must share shape, dtype and device".into()));
    }
    if step.kind() != Kind::Float || step.numel() != 1 || step.device() != param.device() {
        return Err(NativeError("fused AdamW: the step count must be one float32 on the parameters' device".into()));
    }
    let (mut p, mut g, mut m, mut v, mut n) =
        (param.shallow_clone(), grad.shallow_clone(), exp_avg.shallow_clone(), exp_avg_sq.shallow_clone(), step.shallow_clone());
    // SAFETY: five live tch handles, checked above to be what the kernel expects; the C side
    // catches every exception.
    let rc = unsafe {
        ffi::dfn_fused_adamw(p.as_mut_ptr(), g.as_mut_ptr(), m.as_mut_ptr(), v.as_mut_ptr(), n.as_mut_ptr(), s.lr, s.beta1, s.beta2, s.weight_decay, s.eps)
    };
    check(rc)
}
