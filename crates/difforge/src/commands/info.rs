//! `difforge info`: what this build runs on.

use serde::Serialize;

#[derive(Serialize)]
struct Info {
    difforge: &'static str,
    libtorch: &'static str,
    cuda_available: bool,
    cuda_devices: i64,
    cudnn_available: bool,
    threads: i32,
    cores: usize,
}

pub fn run(json: bool) -> anyhow::Result<()> {
    let info = Info {
        difforge: env!("CARGO_PKG_VERSION"),
        libtorch: env!("DIFFORGE_LIBTORCH_VERSION"),
        cuda_available: tch::Cuda::is_available(),
        cuda_devices: tch::Cuda::device_count(),
        cudnn_available: tch::Cuda::cudnn_is_available(),
        threads: tch::get_num_threads(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    if json {
        return super::print_json(&info);
    }
    println!("difforge   {}", info.difforge);
    println!("libtorch   {}", info.libtorch);
    println!(
        "cuda       {} ({} device(s), cuDNN {})",
        if info.cuda_available { "available" } else { "not available" },
        info.cuda_devices,
        if info.cudnn_available { "available" } else { "not available" }
    );
    println!("threads    {} (cores: {})", info.threads, info.cores);
    Ok(())
}
