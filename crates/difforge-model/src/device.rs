//! Device choice and the libtorch switches that go with it: CPU threads, which CPU kernels run
//! (portable or native), cuDNN autotuning, TF32.

use difforge_config::{CpuKernels, DeviceChoice, Precision, TrainConfig};
use difforge_core::ConfigError;
use tch::Device;

/// What a command asks of the device.
#[derive(Debug, Clone, Copy)]
pub struct DeviceSettings<'a> {
    /// Where the device setting came from, for errors (`train.device`, `--device`).
    pub key: &'a str,
    /// "auto", "cpu", "cuda" or "cuda:N".
    pub device: &'a str,
    /// CPU threads; 0 means one per core.
    pub threads: usize,
    pub precision: Precision,
    pub kernels: CpuKernels,
    /// The process runs backward passes: in portable mode on CUDA, attention then takes the
    /// math backend, the only one whose backward repeats.
    pub trains: bool,
}

impl<'a> DeviceSettings<'a> {
    /// The settings of a run's `[train]` section.
    pub fn of_run(train: &'a TrainConfig) -> DeviceSettings<'a> {
        DeviceSettings {
            key: "train.device",
            device: &train.device,
            threads: train.threads,
            precision: train.precision,
            kernels: train.cpu_kernels,
            trains: true,
        }
    }
}

/// The environment that pins ATen's CPU capability, oneDNN's instruction set and MKL's
/// conditional numerical reproducibility branch to AVX2: what every x86-64 server of the last
/// decade has. Each library reads its variable once, at its first use.
pub const PORTABLE_ENV: [(&str, &str); 3] = [("ATEN_CPU_CAPABILITY", "avx2"), ("ONEDNN_MAX_CPU_ISA", "AVX2"), ("MKL_CBWR", "AVX2")];

/// cuBLAS's fixed workspace, without which its matmuls may pick split-K reductions that differ
/// from run to run (read when cuBLAS starts, so set before any CUDA work).
const CUBLAS_DETERMINISM: (&str, &str) = ("CUBLAS_WORKSPACE_CONFIG", ":4096:8");

/// A description of the kernels in use, for summaries and benchmarks.
pub fn describe_kernels(kernels: CpuKernels) -> String {
    match kernels {
        CpuKernels::Portable => format!("portable ({})", PORTABLE_ENV.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")),
        CpuKernels::Native => "native (this machine's fastest kernels)".to_string(),
    }
}

/// Pins the kernels before libtorch first computes anything. The portable mode overrides what
/// the environment says; the native one leaves it alone.
fn pin_kernels(kernels: CpuKernels) {
    if kernels == CpuKernels::Portable {
        for (key, value) in PORTABLE_ENV.into_iter().chain([CUBLAS_DETERMINISM]) {
            std::env::set_var(key, value);
        }
    }
}

/// Resolves the device, checks that it exists, pins the CPU kernels, sets the CPU threads, TF32
/// as the precision says and, on CUDA, cuDNN autotuning (off in portable mode, whose point is
/// repeatable bytes).
pub fn prepare(s: &DeviceSettings) -> Result<Device, ConfigError> {
    pin_kernels(s.kernels);
    let dev = match DeviceChoice::parse(s.key, s.device)? {
        DeviceChoice::Auto => {
            if tch::Cuda::is_available() {
                Device::Cuda(0)
            } else {
                Device::Cpu
            }
        }
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Cuda(n) => {
            let count = tch::Cuda::device_count() as usize;
            if n >= count {
                return Err(ConfigError::new(s.key, format!("\"{}\"", s.device), format!("a device that exists: {count} CUDA device(s) available")));
            }
            Device::Cuda(n)
        }
    };
    if dev.is_cuda() {
        // Shapes are fixed during training, so cuDNN can pick the fastest kernels once; the
        // portable mode keeps its default, deterministic choice, and asks libtorch for
        // deterministic algorithms (see the README's Reproducibility).
        let portable = s.kernels == CpuKernels::Portable;
        tch::Cuda::cudnn_set_benchmark(!portable);
        if let Err(e) = difforge_native::cuda::set_deterministic(portable, portable && s.trains) {
            tracing::warn!("could not switch deterministic CUDA algorithms {}: {e}", if portable { "on" } else { "off" });
        }
    }
    set_tf32(s.precision);
    if !dev.is_cuda() && s.precision == Precision::Bf16 {
        // Measured on an AVX2 EPYC (2 cores): the tiny model trained 4x slower than in float32,
        // the digits model 10x.
        tracing::warn!(
            "bf16 autocast on the CPU: fast only where the CPU has bfloat16 instructions (AVX512-BF16, AMX); elsewhere several times slower than fp32"
        );
    }
    tch::set_num_threads(resolve_threads(s.threads) as i32);
    Ok(dev)
}

/// TF32 tensor-core maths in float32 matmuls and convolutions: off for `fp32` (exact float32,
/// as `torch.backends.cuda.matmul.allow_tf32 = False` and `cudnn.allow_tf32 = False`), on for
/// `tf32` and for `bf16` (whose float32 parts PyTorch users also run in TF32). libtorch's own
/// defaults (matmul off, cuDNN on) are never left in place: the config decides both. No effect
/// on the CPU.
pub fn set_tf32(precision: Precision) {
    let on = precision != Precision::Fp32;
    if let Err(e) = difforge_native::cuda::set_tf32(on, on) {
        // Only a libtorch without these switches fails here; the run is still correct.
        tracing::warn!("could not set TF32 {}: {e}", if on { "on" } else { "off" });
    }
}

/// What libtorch's CUDA allocator holds on `dev` at most since the last reset, in bytes
/// (tensors, then the allocator's reserve); `None` on the CPU.
pub fn cuda_peak_memory(dev: Device) -> Option<(u64, u64)> {
    match dev {
        Device::Cuda(n) => difforge_native::cuda::peak_memory(n).ok(),
        _ => None,
    }
}

/// Starts a new peak for [`cuda_peak_memory`].
pub fn reset_cuda_peak_memory(dev: Device) {
    if let Device::Cuda(n) = dev {
        let _ = difforge_native::cuda::reset_peak_memory(n);
    }
}

/// 0 means one thread per core.
pub fn resolve_threads(threads: usize) -> usize {
    if threads > 0 {
        threads
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

pub fn describe(dev: Device) -> String {
    match dev {
        Device::Cpu => "cpu".into(),
        Device::Cuda(n) => format!("cuda:{n}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Moves every variable of `vs` to `device` in place (the networks built over them hold the same
/// tensors, so they follow), or says why it cannot: tch's `VarStore::set_device` would panic.
pub fn move_var_store(vs: &mut tch::nn::VarStore, device: Device) -> Result<(), crate::ModelError> {
    if device == vs.device() {
        return Ok(());
    }
    tch::no_grad(|| -> Result<(), crate::ModelError> {
        for (name, mut var) in vs.variables() {
            let moved = var.f_to_device(device).map_err(|e| crate::ModelError::Other(format!("cannot move the model's {name} to {device:?}: {e}")))?;
            var.set_data(&moved);
        }
        Ok(())
    })?;
    // Every variable is there already: this only records the device for variables made later.
    vs.set_device(device);
    Ok(())
}
