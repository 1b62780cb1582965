//! `difforge bench --model sd15|sd21|sdxl`: a Stable Diffusion architecture with random weights
//! (nothing is downloaded): one UNet forward at 64x64 latents and a whole text-to-image
//! generation (text encoder, guided DDIM steps, VAE decode), with the process's peak resident
//! memory. `tools/bench_sd.py` runs diffusers on the same architecture beside it.

use super::bench::{check_range, BenchArgs};
use super::text_to_image::parse_size;
use difforge_config::{Precision, TrainConfig};
use difforge_core::ConfigError;
use difforge_diffusion::{NoiseSource, SamplerConfig};
use difforge_model::device::{cuda_peak_memory, prepare, DeviceSettings};
use difforge_model::stable_diffusion::{Generation, PromptIds, StableDiffusion, TextToImage};
use difforge_nn::sd::presets::SdPreset;
use difforge_nn::sd::unet_2d_condition::TextTimeInput;
use serde::Serialize;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Serialize)]
struct SdBenchReport {
    model: String,
    device: String,
    threads: usize,
    unet_parameters: i64,
    build_s: f64,
    /// Median seconds of one UNet forward, batch `batch`, 64x64 latents.
    unet_forward_s: f64,
    batch: usize,
    /// Seconds of one generation: text encoding, `steps` guided steps, VAE decode.
    generate_s: f64,
    /// Its phases: the text encoder(s) alone, the denoising loop (with the encoding), the decode.
    encode_s: f64,
    denoise_s: f64,
    decode_s: f64,
    steps: usize,
    width: i64,
    height: i64,
    /// The process's peak resident memory (VmHWM), bytes.
    peak_rss_bytes: Option<u64>,
    peak_gpu_bytes: Option<u64>,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let steps = args.sample_steps.unwrap_or(20);
    let batch = args.batch.unwrap_or(1);
    for (flag, v) in [("--batch", batch), ("--steps", args.steps), ("--sample-steps", steps)] {
        check_range(flag, v)?;
    }
    if args.precision.is_some_and(|p| p != Precision::Fp32) {
        return Err(ConfigError::new("--precision", format!("{:?}", args.precision), "fp32: Stable Diffusion benchmarks run in float32 for now").into());
    }
    let (width, height) = parse_size(&args.size)?;
    let threads = args.threads.unwrap_or(0);
    let device = prepare(&DeviceSettings {
        key: "--device",
        device: args.device.as_deref().unwrap_or("auto"),
        threads,
        ..DeviceSettings::of_run(&TrainConfig::default())
    })?;
    let preset = SdPreset::named(&args.model)?;
    if !args.json {
        eprintln!("building {} with random weights on {device:?}...", args.model);
    }
    let start = Instant::now();
    let sd = StableDiffusion::from_preset(&preset, device)?;
    let build_s = start.elapsed().as_secs_f64();
    sd.check_size(width, height).map_err(|e| anyhow::anyhow!("{e}"))?;
    let unet_forward_s = tch::no_grad(|| time_unet(&sd, batch, args.warmup.min(1), args.steps))?;
    let phases = tch::no_grad(|| time_generation(&sd, steps, width, height, args.cuda_graphs))?;
    let report = SdBenchReport {
        model: args.model.clone(),
        device: format!("{device:?}"),
        threads: difforge_model::device::resolve_threads(threads),
        unet_parameters: sd.unet_parameters(),
        build_s,
        unet_forward_s,
        batch,
        generate_s: phases.denoise + phases.decode,
        encode_s: phases.encode,
        denoise_s: phases.denoise,
        decode_s: phases.decode,
        steps,
        width,
        height,
        peak_rss_bytes: peak_rss(),
        peak_gpu_bytes: cuda_peak_memory(device).map(|(allocated, _)| allocated),
    };
    if args.json {
        return super::print_json(&report);
    }
    print_report(&report);
    Ok(())
}

/// Random text conditioning of `batch` rows as the UNet takes it.
fn context(sd: &StableDiffusion, batch: i64) -> (Tensor, Option<(Tensor, Tensor)>) {
    let dev = sd.device();
    let dim = sd.unet.config().levels().map(|l| l[0].context_dim).unwrap_or(768);
    let hidden = Tensor::randn([batch, 77, dim], (Kind::Float, dev));
    let added = (sd.generation == Generation::Xl).then(|| {
        let pooled = sd.text_encoders[1].config().projection_dim;
        (Tensor::randn([batch, pooled], (Kind::Float, dev)), Tensor::from_slice(&[1024f32, 1024., 0., 0., 1024., 1024.]).to_device(dev).repeat([batch, 1]))
    });
    (hidden, added)
}

/// Median seconds of one forward at 64x64 latents after `warmup` untimed ones.
fn time_unet(sd: &StableDiffusion, batch: usize, warmup: usize, timed: usize) -> anyhow::Result<f64> {
    let b = batch as i64;
    let x = Tensor::randn([b, 4, 64, 64], (Kind::Float, sd.device()));
    let t = Tensor::full([b], 500.0, (Kind::Float, sd.device()));
    let (hidden, added) = context(sd, b);
    let added = added.as_ref().map(|(text_embeds, time_ids)| TextTimeInput { text_embeds, time_ids });
    let mut times = Vec::with_capacity(timed);
    for i in 0..warmup + timed {
        let start = Instant::now();
        let out = sd.unet.forward(&x, &t, &hidden, added.as_ref())?;
        drop(out);
        synchronize(sd.device());
        if i >= warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

struct Phases {
    encode: f64,
    denoise: f64,
    decode: f64,
}

/// Seconds of one guided generation from random prompt ids, by phase.
fn time_generation(sd: &StableDiffusion, steps: usize, width: i64, height: i64, cuda_graphs: bool) -> anyhow::Result<Phases> {
    let ids = |seed: i64| {
        tch::manual_seed(seed);
        Tensor::randint_low(0, 49406, [1, 77], (Kind::Int64, sd.device()))
    };
    let count = sd.text_encoders.len();
    let prompt_ids = PromptIds { prompt: (0..count).map(|_| ids(1)).collect(), negative: (0..count).map(|_| ids(2)).collect(), negative_empty: vec![false] };
    let sampler = SamplerConfig { steps, guidance: 7.5, cuda_graphs, ..sd.scheduling.sampler.clone() };
    let noise = NoiseSource::new(vec![0], sd.latent_shape(width, height), sd.device());
    let req = TextToImage { ids: &prompt_ids, width, height, sampler: &sampler, noise: &noise, clip_skip: 0 };
    let start = Instant::now();
    let (cond, _) = sd.conditioning(&prompt_ids, (height, width), 0)?;
    drop(cond);
    synchronize(sd.device());
    let encode = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let latents = sd.denoise(&req, None)?;
    synchronize(sd.device());
    let denoise = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let image = sd.decode(&latents)?;
    synchronize(sd.device());
    drop(image);
    Ok(Phases { encode, denoise, decode: start.elapsed().as_secs_f64() })
}

/// Waits for the device's queued work (CPU work is done when its call returns).
fn synchronize(device: Device) {
    if let Device::Cuda(n) = device {
        tch::Cuda::synchronize(n as i64);
    }
}

/// VmHWM of /proc/self/status (Linux); None elsewhere.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn print_report(r: &SdBenchReport) {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    println!("model          {} ({:.1} M UNet parameters, random weights), {} with {} threads", r.model, r.unet_parameters as f64 / 1e6, r.device, r.threads);
    println!("build          {:.2} s", r.build_s);
    println!("UNet forward   {:.3} s (batch {}, 64x64 latents, median)", r.unet_forward_s, r.batch);
    println!("generation     {:.2} s ({}x{}, {} DDIM steps, guidance 7.5, VAE decode)", r.generate_s, r.width, r.height, r.steps);
    println!("  phases       text encoders {:.2} s (once more, alone), denoising {:.2} s, VAE decode {:.2} s", r.encode_s, r.denoise_s, r.decode_s);
    if let Some(b) = r.peak_rss_bytes {
        println!("peak RSS       {:.2} GiB", gib(b));
    }
    if let Some(b) = r.peak_gpu_bytes {
        println!("peak GPU       {:.2} GiB", gib(b));
    }
}
