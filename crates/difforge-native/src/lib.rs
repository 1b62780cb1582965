//! The native layer: libtorch calls that tch 0.24 does not expose, compiled from one C++ file
//! (`native/difforge_native.cpp`) against the same libtorch, behind safe functions.
//!
//! - [`autocast_bf16`]: bfloat16 autocast on the CPU and CUDA (tch's is CUDA's, in float16);
//! - [`fused_adamw`]: libtorch's fused AdamW kernel (CPU and CUDA), one pass per step;
//! - [`cuda`]: TF32 switches, device properties, the caching allocator's peak memory;
//! - [`CudaGraph`]: capture a sequence of CUDA kernels once and replay it;
//! - [`randn_seeded`]: noise from a private seeded CPU generator, as torch.Generator gives it;
//! - [`dist`]: c10d process groups (Gloo, NCCL) for data-parallel training;
//! - [`MappedFile`]: a file mapped read-only into memory (weights read tensor by tensor);
//! - [`pin_memory`]: page-locked host copies for asynchronous uploads; [`move_to_meta`]: meta
//!   tensors for the device tests.
//!
//! This is the one crate with `unsafe` code: each block passes tch's own tensor handles or plain
//! numbers to a C function that catches every C++ exception, or (`MappedFile`) maps a file.
#![allow(unsafe_code)]

mod autocast;
pub mod cuda;
pub mod dist;
mod ffi;
mod graph;
mod mapped_file;
mod memory;
mod optim;
mod random;

pub use autocast::{autocast_bf16, AutocastBf16};
pub use graph::CudaGraph;
pub use mapped_file::MappedFile;
pub use memory::{move_to_meta, pin_memory};
pub use optim::{fused_adamw, AdamWStep};
pub use random::randn_seeded;

/// A failure reported by libtorch through the native layer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct NativeError(pub String);

/// The last error of this thread, after a native call returned non-zero.
fn last_error() -> NativeError {
    // SAFETY: the C side returns a pointer to a thread-local NUL-terminated string that lives
    // until the next failing call on this thread; it is copied at once.
    let msg = unsafe { std::ffi::CStr::from_ptr(ffi::dfn_last_error()) };
    NativeError(msg.to_string_lossy().into_owned())
}

/// Ok when a native call returned 0.
fn check(rc: std::os::raw::c_int) -> Result<(), NativeError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(last_error())
    }
}

/// True when the CUDA half of the native layer was compiled in (a CUDA libtorch).
pub fn built_with_cuda() -> bool {
    // SAFETY: no arguments, no state.
    unsafe { ffi::dfn_built_with_cuda() != 0 }
}
