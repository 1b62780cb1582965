//! Process groups of PyTorch's c10d (what `torch.distributed.init_process_group` builds): the
//! processes of a run meet through a TCPStore, then reduce, broadcast and gather tensors with
//! Gloo (CPU tensors) or NCCL (CUDA tensors, in a CUDA build). Gloo has no average: sum, then
//! divide.

use crate::{check, ffi, NativeError};
use std::ffi::CString;
use std::os::raw::{c_int, c_void};
use std::time::Duration;
use tch::Tensor;

/// The library that runs the collectives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Gloo, over TCP: CPU tensors.
    Gloo,
    /// NVIDIA's NCCL: CUDA tensors, one GPU per process.
    Nccl,
}

impl Backend {
    /// As torch.distributed names it ("gloo", "nccl").
    pub fn name(self) -> &'static str {
        match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        }
    }
}

/// How a reduction combines the processes' values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum = 0,
    Max = 1,
    Min = 2,
}

/// Where and how to meet the other processes.
#[derive(Debug, Clone)]
pub struct GroupOptions {
    pub backend: Backend,
    /// The TCPStore's host and port (torchrun's MASTER_ADDR and MASTER_PORT).
    pub store_host: String,
    pub store_port: u16,
    pub rank: usize,
    pub world: usize,
    /// This process hosts the store (rank 0, unless torchrun's agent hosts it).
    pub store_server: bool,
    /// A key prefix inside the store (torchrun's agent store: "/worker/attempt_N"); "" for none.
    pub store_prefix: String,
    /// Gloo: the network interface to bind (GLOO_SOCKET_IFNAME), else `gloo_host`'s address,
    /// else the address this machine's hostname resolves to (loopback when it does not).
    pub gloo_interface: Option<String>,
    pub gloo_host: Option<String>,
    /// Every wait (the rendezvous and each collective) fails after this long.
    pub timeout: Duration,
    /// How this process was started (world size, backend, config hash, in words): every rank
    /// must give the same, or joining fails at once naming the difference.
    pub fingerprint: String,
    /// NCCL: this rank's card, bound to the group and connected at once (None: not bound).
    pub cuda_device: Option<usize>,
}

/// A c10d process group of `world` processes, this one being `rank`.
pub struct ProcessGroup {
    handle: *mut c_void,
    rank: usize,
    world: usize,
}

// SAFETY: c10d backends are built to be called from several threads (torch.distributed calls
// them from any Python thread), and the TCPStore serialises its own operations; the handle is
// only freed in Drop, which needs exclusive access.
unsafe impl Send for ProcessGroup {}
unsafe impl Sync for ProcessGroup {}

fn c_string(what: &str, s: &str) -> Result<CString, NativeError> {
    CString::new(s).map_err(|_| NativeError(format!("{what} {s:?} contains a NUL byte")))
}

/// c10d's errors end with the C++ stack of where they were raised; users need the message.
fn concise(e: NativeError) -> NativeError {
    match e.0.find("\nException raised from") {
        Some(cut) => NativeError(e.0[..cut].trim_end().to_string()),
        None => e,
    }
}

/// Ok when a collective returned 0, else its message without the C++ stack.
fn checked(rc: c_int) -> Result<(), NativeError> {
    check(rc).map_err(concise)
}

/// tch handles for a C array of `at::Tensor*`; the clones keep the tensors alive for the call.
fn handles(tensors: &[&Tensor]) -> (Vec<Tensor>, Vec<*mut torch_sys::C_tensor>) {
    let mut owned: Vec<Tensor> = tensors.iter().map(|t| t.shallow_clone()).collect();
    let ptrs = owned.iter_mut().map(|t| t.as_mut_ptr()).collect();
    (owned, ptrs)
}

/// True when the NCCL backend was compiled in (a CUDA build with the wheel's NCCL headers).
pub fn built_with_nccl() -> bool {
    // SAFETY: no arguments, no state.
    unsafe { ffi::dfn_built_with_nccl() != 0 }
}

impl ProcessGroup {
    /// Joins the group; returns once all `world` processes have joined, or fails after the
    /// timeout naming what it waited for.
    pub fn new(o: &GroupOptions) -> Result<ProcessGroup, NativeError> {
        if o.world == 0 || o.rank >= o.world {
            return Err(NativeError(format!("rank {} is outside a world of {} process(es)", o.rank, o.world)));
        }
        let backend = c_string("backend", o.backend.name())?;
        let host = c_string("store host", &o.store_host)?;
        let prefix = c_string("store prefix", &o.store_prefix)?;
        let interface = c_string("gloo interface", o.gloo_interface.as_deref().unwrap_or(""))?;
        let gloo_host = c_string("gloo host", o.gloo_host.as_deref().unwrap_or(""))?;
        let fingerprint = c_string("fingerprint", &o.fingerprint)?;
        let timeout_ms = i64::try_from(o.timeout.as_millis()).unwrap_or(i64::MAX);
        let mut handle = std::ptr::null_mut();
        // SAFETY: NUL-terminated strings that outlive the call, plain numbers, and an out-pointer
        // the C side sets only on success; it catches every exception.
        let rc = unsafe {
            ffi::dfn_group_new(
                backend.as_ptr(),
                host.as_ptr(),
                c_int::from(o.store_port),
                o.rank as c_int,
                o.world as c_int,
                c_int::from(o.store_server),
                prefix.as_ptr(),
                interface.as_ptr(),
                gloo_host.as_ptr(),
                timeout_ms,
                fingerprint.as_ptr(),
                o.cuda_device.map_or(-1, |d| d as c_int),
                &mut handle,
            )
        };
        checked(rc).map_err(|e| {
            NativeError(format!(
                "rank {} of {} could not join the {} group through the store at {}:{}: {e}",
                o.rank,
                o.world,
                o.backend.name(),
                o.store_host,
                o.store_port
            ))
        })?;
        Ok(ProcessGroup { handle, rank: o.rank, world: o.world })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    /// Reduces each tensor across the processes, in place (each tensor its own collective).
    pub fn all_reduce(&self, tensors: &[&Tensor], op: ReduceOp) -> Result<(), NativeError> {
        let (_keep, ptrs) = handles(tensors);
        // SAFETY: live tch handles for the duration of the call; the C side catches exceptions.
        checked(unsafe { ffi::dfn_group_all_reduce(self.handle, ptrs.as_ptr(), ptrs.len() as c_int, op as c_int) })
    }

    /// Copies rank `root`'s tensors into every other process's tensors of the same shapes.
    pub fn broadcast(&self, tensors: &[&Tensor], root: usize) -> Result<(), NativeError> {
        let (_keep, ptrs) = handles(tensors);
        // SAFETY: as in all_reduce.
        checked(unsafe { ffi::dfn_group_broadcast(self.handle, ptrs.as_ptr(), ptrs.len() as c_int, root as c_int) })
    }

    /// Each process's `input`, in rank order (one tensor per rank, shaped like `input`).
    pub fn all_gather(&self, input: &Tensor) -> Result<Vec<Tensor>, NativeError> {
        let outputs: Vec<Tensor> = (0..self.world).map(|_| input.empty_like()).collect();
        let refs: Vec<&Tensor> = outputs.iter().collect();
        let (_keep, ptrs) = handles(&refs);
        let mut input = input.shallow_clone();
        // SAFETY: as in all_reduce; `outputs` are live tensors of the input's shape.
        checked(unsafe { ffi::dfn_group_all_gather(self.handle, input.as_mut_ptr(), ptrs.as_ptr(), ptrs.len() as c_int) })?;
        Ok(outputs)
    }

    /// Returns once every process has called it (or fails after the timeout).
    pub fn barrier(&self) -> Result<(), NativeError> {
        // SAFETY: a live group handle.
        checked(unsafe { ffi::dfn_group_barrier(self.handle) })
    }

    /// Adds `delta` to the store's counter `key` and returns the new value (0 reads it).
    pub fn store_add(&self, key: &str, delta: i64) -> Result<i64, NativeError> {
        let key = c_string("store key", key)?;
        let mut value = 0i64;
        // SAFETY: a live group handle, a NUL-terminated key and an out-pointer to a local.
        checked(unsafe { ffi::dfn_group_store_add(self.handle, key.as_ptr(), delta, &mut value) })?;
        Ok(value)
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: the handle came from dfn_group_new and is freed once.
        unsafe { ffi::dfn_group_free(self.handle) }
    }
}
