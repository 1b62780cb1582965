//! CUDA graphs: a sequence of kernels captured once and replayed with one launch, which removes
//! the per-kernel launch cost that dominates small networks on fast cards.

use crate::{check, ffi, NativeError};
use std::os::raw::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// A captured graph. The tensors the captured code read and wrote are its inputs and outputs:
/// copy new values into the inputs, [`replay`](CudaGraph::replay), read the outputs. They must
/// outlive the graph and must not be reallocated.
pub struct CudaGraph {
    raw: *mut c_void,
}

/// What the trampoline needs: the body and its error, if it failed.
struct Capture<'a> {
    body: &'a mut dyn FnMut() -> Result<(), String>,
    error: Option<String>,
}

extern "C" fn run_body(ctx: *mut c_void) -> c_int {
    // SAFETY: ctx is the &mut Capture that `CudaGraph::capture` passed and still borrows.
    let capture = unsafe { &mut *(ctx as *mut Capture<'_>) };
    // A panic must not unwind into C++: it becomes an error.
    let outcome = catch_unwind(AssertUnwindSafe(|| (capture.body)())).unwrap_or_else(|_| Err("the captured code panicked".into()));
    match outcome {
        Ok(()) => 0,
        Err(e) => {
            capture.error = Some(e);
            1
        }
    }
}

impl CudaGraph {
    /// Captures what `body` launches on CUDA device `device`, after running it `warmup` times on
    /// the capture's stream (cuDNN and cuBLAS pick their algorithms and allocate workspaces
    /// outside the capture; PyTorch warms up 3 times). The body must not synchronise with the
    /// host. Everything the warm-up runs did happens for real; the capture itself computes
    /// nothing until [`replay`](CudaGraph::replay).
    pub fn capture(device: usize, warmup: usize, mut body: impl FnMut() -> Result<(), String>) -> Result<CudaGraph, NativeError> {
        let mut capture = Capture { body: &mut body, error: None };
        let mut raw = std::ptr::null_mut();
        // SAFETY: `capture` outlives the call, and run_body is the only user of the pointer.
        let rc = unsafe { ffi::dfn_graph_capture(device as i64, warmup as i64, run_body, &mut capture as *mut Capture<'_> as *mut c_void, &mut raw) };
        if let Some(e) = capture.error {
            return Err(NativeError(format!("CUDA graph capture: {e}")));
        }
        check(rc)?;
        Ok(CudaGraph { raw })
    }

    /// Launches the captured kernels again on the current stream.
    pub fn replay(&self) -> Result<(), NativeError> {
        // SAFETY: raw is a graph this value owns.
        check(unsafe { ffi::dfn_graph_replay(self.raw) })
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        // SAFETY: raw is a graph this value owns, freed once.
        unsafe { ffi::dfn_graph_free(self.raw) }
    }
}
