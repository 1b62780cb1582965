//! Where a tensor's memory lives: page-locked host memory for fast uploads, and (for tests) the
//! meta device, which tch cannot name.

use crate::{check, ffi, NativeError};
use tch::Tensor;

/// `t` copied into page-locked host memory (`Tensor.pin_memory()`), from which a copy to the
/// GPU can be asynchronous. Fails where libtorch has no accelerator to pin for.
pub fn pin_memory(t: &Tensor) -> Result<Tensor, NativeError> {
    let mut out = std::ptr::null_mut();
    // SAFETY: a live tch handle read by the C side, which catches every exception and on success
    // writes a new `at::Tensor*` that tch's Tensor then owns (and frees with `delete`, as it frees
    // its own).
    check(unsafe { ffi::dfn_pin_memory(t.as_ptr() as *mut _, &mut out) })?;
    // SAFETY: `out` is a fresh heap tensor handle that nothing else owns.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// Test support: turns `t`, and every handle sharing it (a VarStore's variable and the layer
/// holding it), into a meta tensor of the same shape and dtype, without data. A forward pass over
/// meta weights and inputs fails wherever it mixes in a tensor made on the host, which is how a
/// CPU-only test checks that a network builds its tensors on its input's device. (tch's `Device`
/// has no meta variant, and `set_data` refuses a change of backend.)
pub fn move_to_meta(t: &mut Tensor) -> Result<(), NativeError> {
    // SAFETY: a live tch handle; the C side catches every exception.
    check(unsafe { ffi::dfn_move_to_meta(t.as_mut_ptr()) })
}
