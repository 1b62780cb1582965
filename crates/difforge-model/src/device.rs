//! Device choice and the libtorch switches that go with it.

use difforge_config::{DeviceChoice, Precision};
use difforge_core::ConfigError;
use tch::Device;

/// Resolves a device setting (`key` names where it came from, e.g. `train.device` or
/// `--device`), checks that the device exists, sets the CPU threads and, on CUDA, cuDNN
/// autotuning.
pub fn prepare(key: &str, device: &str, threads: usize, _precision: Precision) -> Result<Device, ConfigError> {
    let dev = match DeviceChoice::parse(key, device)? {
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
                return Err(ConfigError::new(key, format!("\"{device}\""), format!("a device that exists: {count} CUDA device(s) available")));
            }
            Device::Cuda(n)
        }
    };
    if dev.is_cuda() {
        // Shapes are fixed during training, so let cuDNN pick the fastest kernels once.
        tch::Cuda::cudnn_set_benchmark(true);
    }
    tch::set_num_threads(resolve_threads(threads) as i32);
    Ok(dev)
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
