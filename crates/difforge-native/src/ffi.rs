//! The C functions of native/difforge_native.cpp. Tensors are tch's handles (`at::Tensor*`).

use std::os::raw::{c_char, c_int, c_void};
use torch_sys::C_tensor;

extern "C" {
    pub fn dfn_last_error() -> *const c_char;
    pub fn dfn_built_with_cuda() -> c_int;
    pub fn dfn_fused_adamw(
        param: *mut C_tensor,
        grad: *mut C_tensor,
        exp_avg: *mut C_tensor,
        exp_avg_sq: *mut C_tensor,
        step: *mut C_tensor,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
    ) -> c_int;
    pub fn dfn_normal_seeded(out: *mut C_tensor, seed: u64) -> c_int;
    pub fn dfn_pin_memory(src: *mut C_tensor, out: *mut *mut C_tensor) -> c_int;
    pub fn dfn_move_to_meta(t: *mut C_tensor) -> c_int;
    pub fn dfn_autocast_enter(cuda: c_int, enabled: c_int, prev_enabled: *mut c_int, prev_dtype: *mut c_int) -> c_int;
    pub fn dfn_autocast_exit(cuda: c_int, prev_enabled: c_int, prev_dtype: c_int) -> c_int;
    pub fn dfn_set_tf32(matmul: c_int, cudnn: c_int) -> c_int;
    pub fn dfn_tf32(matmul: *mut c_int, cudnn: *mut c_int) -> c_int;
    pub fn dfn_set_deterministic(on: c_int, math_attention: c_int) -> c_int;
    pub fn dfn_deterministic(cudnn: *mut c_int, algorithms: *mut c_int, fused_attention: *mut c_int) -> c_int;
    pub fn dfn_cuda_device_properties(
        index: i64,
        name: *mut c_char,
        name_len: usize,
        total_memory: *mut u64,
        major: *mut c_int,
        minor: *mut c_int,
        multiprocessors: *mut c_int,
    ) -> c_int;
    pub fn dfn_cuda_peak_memory(index: i64, allocated: *mut u64, reserved: *mut u64) -> c_int;
    pub fn dfn_cuda_reset_peak_memory(index: i64) -> c_int;
    pub fn dfn_graph_capture(index: i64, warmup: i64, body: extern "C" fn(*mut c_void) -> c_int, ctx: *mut c_void, out: *mut *mut c_void) -> c_int;
    pub fn dfn_graph_replay(graph: *mut c_void) -> c_int;
    pub fn dfn_graph_free(graph: *mut c_void);
    pub fn dfn_built_with_nccl() -> c_int;
    pub fn dfn_group_new(
        backend: *const c_char,
        host: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        store_server: c_int,
        store_prefix: *const c_char,
        gloo_interface: *const c_char,
        gloo_host: *const c_char,
        timeout_ms: i64,
        fingerprint: *const c_char,
        cuda_device: c_int,
        out: *mut *mut c_void,
    ) -> c_int;
    pub fn dfn_group_all_reduce(group: *mut c_void, tensors: *const *mut C_tensor, n: c_int, op: c_int) -> c_int;
    pub fn dfn_group_broadcast(group: *mut c_void, tensors: *const *mut C_tensor, n: c_int, root: c_int) -> c_int;
    pub fn dfn_group_all_gather(group: *mut c_void, input: *mut C_tensor, outputs: *const *mut C_tensor, n: c_int) -> c_int;
    pub fn dfn_group_barrier(group: *mut c_void) -> c_int;
    pub fn dfn_group_store_add(group: *mut c_void, key: *const c_char, delta: i64, value: *mut i64) -> c_int;
    pub fn dfn_group_free(group: *mut c_void);
}
