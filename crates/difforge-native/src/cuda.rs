//! CUDA settings and statistics that libtorch keeps and tch does not expose.

use crate::{check, ffi, NativeError};
use std::os::raw::{c_char, c_int};

/// Allows (or forbids) TF32 in float32 matmuls and cuDNN convolutions, like PyTorch's
/// `torch.backends.cuda.matmul.allow_tf32` and `torch.backends.cudnn.allow_tf32`. Harmless
/// without CUDA (the flags are process-wide settings of libtorch).
pub fn set_tf32(matmul: bool, cudnn: bool) -> Result<(), NativeError> {
    // SAFETY: plain integers.
    check(unsafe { ffi::dfn_set_tf32(c_int::from(matmul), c_int::from(cudnn)) })
}

/// The TF32 switches as libtorch has them: (matmul, cudnn).
pub fn tf32() -> Result<(bool, bool), NativeError> {
    let (mut matmul, mut cudnn) = (0, 0);
    // SAFETY: two valid out-pointers.
    check(unsafe { ffi::dfn_tf32(&mut matmul, &mut cudnn) })?;
    Ok((matmul != 0, cudnn != 0))
}

/// Makes CUDA runs repeat (or, with `on = false`, restores libtorch's defaults): deterministic
/// cuDNN, deterministic algorithms where an op has one (a warning where not), and with
/// `math_attention` attention on the math backend, the only one whose backward repeats.
/// Process-wide; on the CPU it changes which attention kernel runs, so call it for CUDA only.
pub fn set_deterministic(on: bool, math_attention: bool) -> Result<(), NativeError> {
    // SAFETY: plain integers.
    check(unsafe { ffi::dfn_set_deterministic(c_int::from(on), c_int::from(math_attention)) })
}

/// The switches [`set_deterministic`] sets, as libtorch has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Determinism {
    pub cudnn: bool,
    pub algorithms: bool,
    /// Whether any fused (flash, memory-efficient, cuDNN) attention backend may run.
    pub fused_attention: bool,
}

pub fn determinism() -> Result<Determinism, NativeError> {
    let (mut cudnn, mut algorithms, mut fused) = (0, 0, 0);
    // SAFETY: three valid out-pointers.
    check(unsafe { ffi::dfn_deterministic(&mut cudnn, &mut algorithms, &mut fused) })?;
    Ok(Determinism { cudnn: cudnn != 0, algorithms: algorithms != 0, fused_attention: fused != 0 })
}

/// What `difforge info` and the benchmarks say about a card.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceProperties {
    pub name: String,
    pub total_memory_bytes: u64,
    /// Compute capability (major, minor), e.g. (9, 0) for H100/H200.
    pub compute_capability: (i32, i32),
    pub multiprocessors: i32,
}

/// The properties of CUDA device `index`.
pub fn device_properties(index: usize) -> Result<DeviceProperties, NativeError> {
    let mut name = [0 as c_char; 256];
    let (mut mem, mut major, mut minor, mut sms) = (0u64, 0, 0, 0);
    // SAFETY: a 256-byte buffer whose length is passed, and valid out-pointers.
    check(unsafe { ffi::dfn_cuda_device_properties(index as i64, name.as_mut_ptr(), name.len(), &mut mem, &mut major, &mut minor, &mut sms) })?;
    // SAFETY: the C side wrote a NUL-terminated string into the buffer (snprintf).
    let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned();
    Ok(DeviceProperties { name, total_memory_bytes: mem, compute_capability: (major, minor), multiprocessors: sms })
}

/// Peak bytes (held by tensors, reserved by the caching allocator) on CUDA device `index` since
/// the start or the last [`reset_peak_memory`].
pub fn peak_memory(index: usize) -> Result<(u64, u64), NativeError> {
    let (mut allocated, mut reserved) = (0u64, 0u64);
    // SAFETY: two valid out-pointers.
    check(unsafe { ffi::dfn_cuda_peak_memory(index as i64, &mut allocated, &mut reserved) })?;
    Ok((allocated, reserved))
}

pub fn reset_peak_memory(index: usize) -> Result<(), NativeError> {
    // SAFETY: a plain integer.
    check(unsafe { ffi::dfn_cuda_reset_peak_memory(index as i64) })
}
