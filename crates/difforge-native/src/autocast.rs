//! bfloat16 autocast on the CPU and on CUDA, as `torch.autocast(device_type, dtype=torch.bfloat16)`:
//! inside it, matmuls and convolutions run in bfloat16 while the weights stay float32. tch's own
//! `autocast` turns on CUDA's autocast alone, and leaves its dtype at libtorch's CUDA default,
//! float16, which is not what a bf16 run asks for.

use crate::{check, ffi, NativeError};
use std::marker::PhantomData;
use std::os::raw::c_int;
use tch::Device;

/// bfloat16 autocast for one device type, entered by [`AutocastBf16::enter`] and left (the
/// previous state restored) when dropped, also when the scope unwinds. The state is the
/// thread's, as in PyTorch, so the guard stays on its thread.
pub struct AutocastBf16 {
    /// (cuda, previous switch, previous dtype); None when autocast was not asked for.
    entered: Option<(c_int, c_int, c_int)>,
    _thread_bound: PhantomData<*const ()>,
}

impl AutocastBf16 {
    /// Enters bfloat16 autocast for `device`'s tensors (CPU or CUDA) when `enabled`; otherwise a
    /// guard that changes nothing.
    pub fn enter(device: Device, enabled: bool) -> Result<AutocastBf16, NativeError> {
        if !enabled {
            return Ok(AutocastBf16 { entered: None, _thread_bound: PhantomData });
        }
        let cuda = c_int::from(device.is_cuda());
        let (mut prev_enabled, mut prev_dtype) = (0, 0);
        // SAFETY: two out-pointers to locals; the C side catches every exception.
        check(unsafe { ffi::dfn_autocast_enter(cuda, 1, &mut prev_enabled, &mut prev_dtype) })?;
        Ok(AutocastBf16 { entered: Some((cuda, prev_enabled, prev_dtype)), _thread_bound: PhantomData })
    }
}

impl Drop for AutocastBf16 {
    fn drop(&mut self) {
        if let Some((cuda, prev_enabled, prev_dtype)) = self.entered {
            // SAFETY: plain integers; the C side catches every exception. Restoring can only fail
            // if libtorch rejects the state it reported itself, so a failure is ignored.
            let _ = unsafe { ffi::dfn_autocast_exit(cuda, prev_enabled, prev_dtype) };
        }
    }
}

/// Runs `f` under bfloat16 autocast for `device`'s tensors when `enabled`.
pub fn autocast_bf16<T>(device: Device, enabled: bool, f: impl FnOnce() -> T) -> Result<T, NativeError> {
    let _guard = AutocastBf16::enter(device, enabled)?;
    Ok(f())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn cpu_matmuls_run_in_bfloat16_inside_and_float32_after() {
        let a = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([8, 3], (Kind::Float, Device::Cpu));
        let inside = autocast_bf16(Device::Cpu, true, || a.matmul(&b)).unwrap();
        assert_eq!(inside.kind(), Kind::BFloat16);
        let nested = autocast_bf16(Device::Cpu, true, || autocast_bf16(Device::Cpu, true, || a.matmul(&b)).unwrap()).unwrap();
        assert_eq!(nested.kind(), Kind::BFloat16);
        assert_eq!(a.matmul(&b).kind(), Kind::Float, "autocast ends with its scope");
        assert_eq!(autocast_bf16(Device::Cpu, false, || a.matmul(&b)).unwrap().kind(), Kind::Float);
        let exact = a.matmul(&b);
        let err = (inside.to_kind(Kind::Float) - &exact).abs().max().double_value(&[]);
        assert!(err > 0.0 && err < 0.1 * exact.abs().max().double_value(&[]), "bfloat16 rounding: {err}");
    }
}
