//! `difforge info`: what this build runs on.

use difforge_train::world::World;
use serde::Serialize;

#[derive(Serialize)]
struct Info {
    difforge: &'static str,
    libtorch: &'static str,
    cuda_available: bool,
    cuda_devices: i64,
    cudnn_available: bool,
    /// Whether difforge's native layer has its CUDA half (TF32, peak memory, CUDA graphs).
    native_cuda: bool,
    gpus: Vec<Gpu>,
    threads: i32,
    cores: usize,
    /// This process's place in a multi-process run, as the trainer will read it.
    world: WorldInfo,
    /// The c10d backends compiled in for multi-process training (gloo always; nccl in CUDA builds).
    collectives: Vec<&'static str>,
}

/// The world, or why the launcher's variables make no sense (shown, not fatal: `info` is where
/// one looks to find out).
#[derive(Serialize)]
#[serde(untagged)]
enum WorldInfo {
    Ok(World),
    Err { error: String },
}

impl WorldInfo {
    fn from_env() -> WorldInfo {
        World::from_env().map_or_else(|e| WorldInfo::Err { error: e.to_string() }, WorldInfo::Ok)
    }

    /// One line: `rank 1 of 4 (local 1 of 2), difforge, master 127.0.0.1:29500`.
    fn line(&self) -> String {
        match self {
            WorldInfo::Ok(w) if !w.is_distributed() && w.launcher == difforge_train::world::Launcher::Single => "single process".to_string(),
            WorldInfo::Ok(w) => format!(
                "rank {} of {} (local {} of {}), {}, master {}:{}",
                w.rank, w.size, w.local_rank, w.local_size, w.launcher, w.master_addr, w.master_port
            ),
            WorldInfo::Err { error } => format!("error: {error}"),
        }
    }
}

#[derive(Serialize)]
struct Gpu {
    index: usize,
    name: String,
    memory_bytes: u64,
    compute_capability: String,
    multiprocessors: i32,
}

fn gpus(count: i64) -> Vec<Gpu> {
    (0..count.max(0) as usize)
        .filter_map(|index| {
            let p = difforge_native::cuda::device_properties(index).ok()?;
            Some(Gpu {
                index,
                name: p.name,
                memory_bytes: p.total_memory_bytes,
                compute_capability: format!("{}.{}", p.compute_capability.0, p.compute_capability.1),
                multiprocessors: p.multiprocessors,
            })
        })
        .collect()
}

pub fn run(json: bool) -> anyhow::Result<()> {
    let cuda_devices = tch::Cuda::device_count();
    let info = Info {
        difforge: env!("CARGO_PKG_VERSION"),
        libtorch: env!("DIFFORGE_LIBTORCH_VERSION"),
        cuda_available: tch::Cuda::is_available(),
        cuda_devices,
        cudnn_available: tch::Cuda::cudnn_is_available(),
        native_cuda: difforge_native::built_with_cuda(),
        gpus: gpus(cuda_devices),
        threads: tch::get_num_threads(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        world: WorldInfo::from_env(),
        collectives: if difforge_native::dist::built_with_nccl() { vec!["gloo", "nccl"] } else { vec!["gloo"] },
    };
    if json {
        return super::print_json(&info);
    }
    println!("difforge   {}", info.difforge);
    println!("libtorch   {} (native layer {})", info.libtorch, if info.native_cuda { "with CUDA" } else { "CPU only" });
    println!(
        "cuda       {} ({} device(s), cuDNN {})",
        if info.cuda_available { "available" } else { "not available" },
        info.cuda_devices,
        if info.cudnn_available { "available" } else { "not available" }
    );
    for g in &info.gpus {
        println!(
            "gpu {}      {}, {:.1} GiB, compute capability {}, {} multiprocessors",
            g.index,
            g.name,
            g.memory_bytes as f64 / (1u64 << 30) as f64,
            g.compute_capability,
            g.multiprocessors
        );
    }
    println!("threads    {} (cores: {})", info.threads, info.cores);
    println!("world      {}", info.world.line());
    println!("collectives {} (multi-process training)", info.collectives.join(", "));
    Ok(())
}
