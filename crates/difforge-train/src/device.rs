//! Device choice and the libtorch switches that go with it.

use crate::config::Precision;
use tch::Device;

/// "auto" | "cpu" | "cuda" | "cuda:N" -> a device; auto picks CUDA when present.
pub fn parse_device(s: &str) -> Result<Device, String> {
    match s {
        "auto" => Ok(if tch::Cuda::is_available() { Device::Cuda(0) } else { Device::Cpu }),
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(Device::Cuda(n)),
            _ => Err(format!("train.device = \"{s}\": expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\"")),
        },
    }
}

/// Resolves the device, checks that it exists, and sets threads and cuDNN autotuning.
pub fn prepare(device: &str, threads: usize, _precision: Precision) -> Result<Device, String> {
    let dev = parse_device(device)?;
    if let Device::Cuda(n) = dev {
        let count = tch::Cuda::device_count() as usize;
        if n >= count {
            return Err(format!("train.device = \"{device}\": {count} CUDA device(s) available"));
        }
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
