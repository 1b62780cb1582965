// difforge's native layer: the few libtorch calls that tch 0.24 does not expose, as plain C
// functions over tch's tensor handles (`at::Tensor*`). Every function returns 0 on success and -1
// on failure, with the message kept for `dfn_last_error` (C++ exceptions never cross into Rust).
// The CUDA half is compiled only against a CUDA libtorch (DIFFORGE_NATIVE_CUDA, see build.rs).

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/empty_strided.h>

#include "guard.h"

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <memory>
#include <string>

#ifdef DIFFORGE_NATIVE_CUDA
#include <ATen/cuda/CUDAContextLight.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/StreamGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

using difforge_native::fail;
using difforge_native::guarded;

extern "C" {

// The message of the last failure on this thread ("" when none).
const char* dfn_last_error() { return difforge_native::last_error.c_str(); }

// 1 when the CUDA half was compiled in.
int dfn_built_with_cuda() {
#ifdef DIFFORGE_NATIVE_CUDA
  return 1;
#else
  return 0;
#endif
}

// One AdamW step with libtorch's fused kernel (one pass over each buffer; CPU and CUDA kernels),
// exactly torch.optim.AdamW(fused=True): `step` is a float32 scalar tensor holding the step
// number, already incremented, on the parameters' device.
int dfn_fused_adamw(at::Tensor* param, at::Tensor* grad, at::Tensor* exp_avg, at::Tensor* exp_avg_sq, at::Tensor* step, double lr, double beta1,
                    double beta2, double weight_decay, double eps) {
  return guarded([&] {
    at::_fused_adamw_({*param}, {*grad}, {*exp_avg}, {*exp_avg_sq}, {}, {*step}, lr, beta1, beta2, weight_decay, eps, /*amsgrad=*/false,
                      /*maximize=*/false);
  });
}

// Fills the CPU tensor `out` with standard normal values from a fresh CPU generator seeded with
// `seed`: exactly torch.randn(out.shape, generator=torch.Generator("cpu").manual_seed(seed)),
// without touching libtorch's global generator (which other threads may be drawing from).
int dfn_normal_seeded(at::Tensor* out, uint64_t seed) {
  return guarded([&] {
    if (!out->device().is_cpu()) {
      throw std::invalid_argument("seeded normal noise is drawn on the CPU");
    }
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    out->normal_(0.0, 1.0, gen);
  });
}

// `*out` = `src` copied into page-locked host memory for the current accelerator:
// Tensor.pin_memory() without a device. (tch's pin_memory passes one, which libtorch 2.11
// deprecates with a warning at every call.)
int dfn_pin_memory(at::Tensor* src, at::Tensor** out) {
  *out = nullptr;
  return guarded([&] { *out = new at::Tensor(src->pin_memory()); });
}

// Test support: makes `t` a meta tensor (shape and dtype, no data) in place, so that every
// handle to it (a VarStore's variable and the layer holding it) follows, as set_data would if
// it allowed a change of backend. Meta tensors let a CPU-only test find tensors that a forward
// pass makes on the host: an op mixing them with meta tensors fails.
int dfn_move_to_meta(at::Tensor* t) {
  return guarded([&] {
    at::Tensor meta = at::empty_strided(t->sizes(), t->strides(), t->options().device(at::kMeta));
    t->unsafeGetTensorImpl()->shallow_copy_from(meta.getIntrusivePtr());
  });
}

// Enters bfloat16 autocast on the CPU (cuda = 0) or on CUDA (cuda = 1), as
// `torch.autocast(device_type, dtype=torch.bfloat16, enabled=enabled)` does: the switch and the
// dtype are this thread's, and the previous ones are returned for dfn_autocast_exit. (tch's
// autocast turns on CUDA's alone, whose default dtype is float16.)
int dfn_autocast_enter(int cuda, int enabled, int* prev_enabled, int* prev_dtype) {
  return guarded([&] {
    const auto device = cuda ? at::kCUDA : at::kCPU;
    *prev_enabled = at::autocast::is_autocast_enabled(device) ? 1 : 0;
    *prev_dtype = static_cast<int>(at::autocast::get_autocast_dtype(device));
    at::autocast::set_autocast_enabled(device, enabled != 0);
    at::autocast::set_autocast_dtype(device, at::kBFloat16);
    at::autocast::increment_nesting();
  });
}

// Leaves what dfn_autocast_enter entered: the outermost exit frees the cast weights' cache.
int dfn_autocast_exit(int cuda, int prev_enabled, int prev_dtype) {
  return guarded([&] {
    const auto device = cuda ? at::kCUDA : at::kCPU;
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(device, prev_enabled != 0);
    at::autocast::set_autocast_dtype(device, static_cast<at::ScalarType>(prev_dtype));
  });
}

// TF32 for float32 matmuls (cuBLAS) and cuDNN convolutions: PyTorch's
// torch.backends.cuda.matmul.allow_tf32 / torch.backends.cudnn.allow_tf32.
int dfn_set_tf32(int matmul, int cudnn) {
  return guarded([&] {
    at::globalContext().setFloat32MatmulPrecision(matmul ? "high" : "highest");
    at::globalContext().setAllowTF32CuDNN(cudnn != 0);
  });
}

int dfn_tf32(int* matmul, int* cudnn) {
  return guarded([&] {
    *matmul = at::globalContext().allowTF32CuBLAS() ? 1 : 0;
    *cudnn = at::globalContext().allowTF32CuDNN() ? 1 : 0;
  });
}

// What makes a CUDA run repeat (PyTorch's reproducibility notes): deterministic cuDNN
// algorithms, torch.use_deterministic_algorithms(True, warn_only=True) (ops without a
// deterministic kernel warn instead of failing), and scaled-dot-product attention on the math
// backend, whose backward is the only deterministic one (flash, memory-efficient and cuDNN
// attention accumulate in a varying order). `on` = 0 restores libtorch's defaults.
// `math_attention` = 0 keeps the fused attention backends (their forward passes repeat; only
// a process that trains needs the math one).
int dfn_set_deterministic(int on, int math_attention) {
  return guarded([&] {
    auto& ctx = at::globalContext();
    ctx.setDeterministicCuDNN(on != 0);
    ctx.setDeterministicAlgorithms(on != 0, /*warn_only=*/true);
    const bool fused = on == 0 || math_attention == 0;
    ctx.setSDPUseFlash(fused);
    ctx.setSDPUseMemEfficient(fused);
    ctx.setSDPUseCuDNN(fused);
  });
}

// The switches dfn_set_deterministic sets, read back: cuDNN, algorithms, fused attention allowed.
int dfn_deterministic(int* cudnn, int* algorithms, int* fused_attention) {
  return guarded([&] {
    auto& ctx = at::globalContext();
    *cudnn = ctx.deterministicCuDNN() ? 1 : 0;
    *algorithms = ctx.deterministicAlgorithms() ? 1 : 0;
    *fused_attention = (ctx.userEnabledFlashSDP() || ctx.userEnabledMemEfficientSDP() || ctx.userEnabledCuDNNSDP()) ? 1 : 0;
  });
}

// Name, memory and compute capability of CUDA device `index`.
int dfn_cuda_device_properties(int64_t index, char* name, size_t name_len, uint64_t* total_memory, int* major, int* minor,
                               int* multiprocessors) {
#ifdef DIFFORGE_NATIVE_CUDA
  return guarded([&] {
    const cudaDeviceProp* p = at::cuda::getDeviceProperties(static_cast<c10::DeviceIndex>(index));
    std::snprintf(name, name_len, "%s", p->name);
    *total_memory = p->totalGlobalMem;
    *major = p->major;
    *minor = p->minor;
    *multiprocessors = p->multiProcessorCount;
  });
#else
  return fail("difforge was built against a libtorch without CUDA");
#endif
}

// Peak bytes held by tensors and reserved by the CUDA caching allocator on device `index`
// since the start or the last reset (torch.cuda.max_memory_allocated / max_memory_reserved).
int dfn_cuda_peak_memory(int64_t index, uint64_t* allocated, uint64_t* reserved) {
#ifdef DIFFORGE_NATIVE_CUDA
  return guarded([&] {
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(index));
    const auto all = static_cast<size_t>(c10::CachingDeviceAllocator::StatType::AGGREGATE);
    *allocated = static_cast<uint64_t>(stats.allocated_bytes[all].peak);
    *reserved = static_cast<uint64_t>(stats.reserved_bytes[all].peak);
  });
#else
  return fail("difforge was built against a libtorch without CUDA");
#endif
}

int dfn_cuda_reset_peak_memory(int64_t index) {
#ifdef DIFFORGE_NATIVE_CUDA
  return guarded([&] { c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(index)); });
#else
  return fail("difforge was built against a libtorch without CUDA");
#endif
}

// CUDA graphs. `dfn_graph_capture` runs `body(ctx)` `warmup` times on a side stream of device
// `index` (cuDNN and cuBLAS pick their algorithms and allocate their workspaces there, and
// autograd sets up what it keeps between backward passes, all outside the capture, as
// torch.cuda.make_graphed_callables does), then once more while capturing it (the body must
// launch the same kernels on every call and must not synchronise with the host), and returns
// the graph in *out; `dfn_graph_replay` launches it again on the current stream. Tensors the
// body reads and writes must stay alive (and in place) while the graph exists: they are its
// static inputs and outputs.
int dfn_graph_capture(int64_t index, int64_t warmup, int (*body)(void*), void* ctx, void** out) {
#ifdef DIFFORGE_NATIVE_CUDA
  *out = nullptr;
  int body_rc = 0;
  int rc = guarded([&] {
    auto device = static_cast<c10::DeviceIndex>(index);
    // device_synchronize() waits for the *current* device: make it device `index` for the whole
    // capture (restored on return), or a rank whose current device is another GPU would wait
    // for the wrong one and start capturing while its own work is still queued. (The generic
    // guard again: it reaches CUDA through c10's registered guard, like the StreamGuard below.)
    c10::DeviceGuard device_guard(c10::Device(c10::kCUDA, device));
    c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(false, device);
    // The capture starts after all work already queued, and what follows it waits for the
    // capture: a whole-device synchronisation on each side, paid once per capture. (Stream
    // events would be finer, but their inline cudart calls would make this library link the
    // CUDA runtime itself; c10_cuda's exported functions need nothing more.)
    c10::cuda::device_synchronize();
    auto graph = std::make_unique<at::cuda::CUDAGraph>();
    {
      // The generic guard (c10's registered CUDA guard at run time), not CUDAStreamGuard, whose
      // inline implementation would also need the CUDA runtime linked here.
      c10::StreamGuard guard(side.unwrap());
      for (int64_t i = 0; i < warmup && body_rc == 0; ++i) body_rc = body(ctx);
      c10::cuda::device_synchronize();
      if (body_rc == 0) {
        graph->capture_begin();
        body_rc = body(ctx);
        graph->capture_end();
      }
    }
    c10::cuda::device_synchronize();
    if (body_rc == 0) *out = graph.release();
  });
  if (rc == 0 && body_rc != 0) return fail("the captured step failed (see the error it reported)");
  return rc;
#else
  (void)warmup;
  (void)body;
  (void)ctx;
  *out = nullptr;
  return fail("difforge was built against a libtorch without CUDA");
#endif
}

int dfn_graph_replay(void* graph) {
#ifdef DIFFORGE_NATIVE_CUDA
  return guarded([&] { static_cast<at::cuda::CUDAGraph*>(graph)->replay(); });
#else
  (void)graph;
  return fail("difforge was built against a libtorch without CUDA");
#endif
}

void dfn_graph_free(void* graph) {
#ifdef DIFFORGE_NATIVE_CUDA
  delete static_cast<at::cuda::CUDAGraph*>(graph);
#else
  (void)graph;
#endif
}

}  // extern "C"
