//! `difforge bench`: training and sampling throughput of a model preset or a run config, on
//! synthetic data, with FLOPs and (given the card's peak) model FLOPs utilisation.

use difforge_config::{Precision, RunConfig};
use difforge_core::ConfigError;
use difforge_nn::UNetConfig;
use difforge_train::bench::{bench, BenchOptions, BenchReport};
use std::path::Path;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// A model preset (ref6m: the 6.1 M-parameter reference UNet at 32x32 RGB; big64; the Stable
    /// Diffusion architectures sd15, sd21, sdxl with random weights) or a run config TOML file.
    #[arg(long, default_value = "ref6m")]
    pub model: String,
    /// Images per training micro-batch (default 16; Stable Diffusion: the UNet forward's batch, default 1).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Timed training steps.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed training steps before them.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Images sampled at once (default: --batch).
    #[arg(long)]
    pub sample_batch: Option<usize>,
    /// DDIM steps of the sampling measurement (default 50; 20 for Stable Diffusion).
    #[arg(long)]
    pub sample_steps: Option<usize>,
    /// Stable Diffusion presets: the generated image's size in pixels, WxH.
    #[arg(long, default_value = "256x256")]
    pub size: String,
    /// fp32, tf32 or bf16 (default: the config's train.precision; tf32 for presets).
    #[arg(long)]
    pub precision: Option<Precision>,
    /// auto, cpu, cuda or cuda:N (default: the config's train.device; auto for presets).
    #[arg(long)]
    pub device: Option<String>,
    /// Feed the network channels_last (NHWC) images (train.channels_last).
    #[arg(long)]
    pub channels_last: bool,
    /// CUDA only: replay the training step's forward and backward pass and the sampling
    /// step's forward pass from CUDA graphs (train.cuda_graphs, sample.cuda_graphs).
    #[arg(long)]
    pub cuda_graphs: bool,
    /// libtorch CPU threads; 0 = one per core (default: the config's train.threads).
    #[arg(long)]
    pub threads: Option<usize>,
    /// The card's peak dense TFLOP/s at the precision used, to report model FLOPs utilisation.
    #[arg(long)]
    pub peak_tflops: Option<f64>,
    /// Also time each phase of the training step (data, forward, backward, optimiser, EMA),
    /// synchronising the device at each boundary.
    #[arg(long)]
    pub profile: bool,
    #[arg(long)]
    pub json: bool,
}

/// The run config of a preset: the default config with the preset's UNet, unconditional,
/// epsilon target without loss weighting (the same work per step as tools/bench_torch.py).
fn preset_config(name: &str) -> Result<RunConfig, ConfigError> {
    let model = UNetConfig::preset(name)
        .ok_or_else(|| ConfigError::new("--model", name, format!("a preset ({}) or a config file", difforge_core::one_of(UNetConfig::PRESETS))))?;
    let sets = [
        format!("data.channels={}", model.in_channels),
        format!("data.image_size={}", model.image_size),
        format!("model.preset=\"{name}\""),
        "model.num_classes=0".to_string(),
        "diffusion.prediction=\"epsilon\"".to_string(),
        "diffusion.min_snr_gamma=0.0".to_string(),
        "diffusion.class_dropout=0.0".to_string(),
    ];
    RunConfig::from_toml("", &sets, &format!("the {name} preset")).map_err(|e| e.with_key("--model"))
}

fn load_model_config(model: &str) -> Result<RunConfig, ConfigError> {
    let path = Path::new(model);
    if UNetConfig::preset(model).is_some() || !path.is_file() {
        return preset_config(model);
    }
    RunConfig::load(Some(path), &[])
}

pub(super) fn check_range(flag: &str, v: usize) -> Result<(), ConfigError> {
    if v == 0 {
        return Err(ConfigError::new(flag, v, "at least 1"));
    }
    Ok(())
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if difforge_nn::sd::presets::NAMES.contains(&args.model.as_str()) {
        return super::sd_bench::run(&args);
    }
    let sample_steps = args.sample_steps.unwrap_or(50);
    let batch = args.batch.unwrap_or(16);
    for (flag, v) in [("--batch", batch), ("--steps", args.steps), ("--sample-steps", sample_steps), ("--sample-batch", args.sample_batch.unwrap_or(1))] {
        check_range(flag, v)?;
    }
    if let Some(p) = args.peak_tflops {
        if !(p.is_finite() && p > 0.0) {
            return Err(ConfigError::new("--peak-tflops", p, "a positive number of TFLOP/s").into());
        }
    }
    let mut cfg = load_model_config(&args.model)?;
    if sample_steps > cfg.diffusion.timesteps {
        return Err(ConfigError::new("--sample-steps", sample_steps, format!("1..={} (diffusion.timesteps)", cfg.diffusion.timesteps)).into());
    }
    if let Some(p) = args.precision {
        cfg.train.precision = p;
    }
    cfg.train.channels_last |= args.channels_last;
    cfg.train.cuda_graphs |= args.cuda_graphs;
    cfg.sample.cuda_graphs |= args.cuda_graphs;
    if let Some(d) = &args.device {
        difforge_config::DeviceChoice::parse("--device", d)?;
        cfg.train.device = d.clone();
    }
    if let Some(t) = args.threads {
        cfg.train.threads = t;
    }
    let opts = BenchOptions {
        model_name: args.model.clone(),
        batch,
        steps: args.steps,
        warmup: args.warmup,
        sample_batch: args.sample_batch.unwrap_or(batch),
        sample_steps,
        peak_tflops: args.peak_tflops,
        profile: args.profile,
    };
    if !args.json {
        eprintln!(
            "benchmarking {} ({} warm-up + {} timed steps of batch {}, then DDIM {} at batch {})...",
            args.model, opts.warmup, opts.steps, opts.batch, opts.sample_steps, opts.sample_batch
        );
    }
    let report = bench(&cfg, &opts).map_err(|e| match e {
        difforge_train::TrainError::Config(c) if args.device.is_some() && c.key == "train.device" => c.with_key("--device").into(),
        difforge_train::TrainError::Config(c) if args.cuda_graphs && c.key == "train.cuda_graphs" => c.with_key("--cuda-graphs").into(),
        other => anyhow::Error::from(other),
    })?;
    if args.json {
        return super::print_json(&report);
    }
    print_table(&report);
    Ok(())
}

fn human_flops(f: f64) -> String {
    if f >= 1e9 {
        format!("{:.3} GFLOP", f / 1e9)
    } else {
        format!("{:.3} MFLOP", f / 1e6)
    }
}

/// "data 1.2 ms (3%), forward ..." for one step.
fn phase_line(p: &difforge_train::step::PhaseTimes, step_s: f64) -> String {
    let parts = [("data", p.data_s), ("forward", p.forward_s), ("backward", p.backward_s), ("optimizer", p.optimizer_s), ("EMA", p.ema_s)];
    let items: Vec<String> = parts.iter().map(|(k, s)| format!("{k} {:.1} ms ({:.0}%)", 1e3 * s, 100.0 * s / step_s)).collect();
    items.join(", ")
}

fn print_table(r: &BenchReport) {
    let mfu = |m: Option<f64>| m.map_or("- (give --peak-tflops)".to_string(), |m| format!("{:.1}%", 100.0 * m));
    let rows: Vec<(&str, String)> = vec![
        ("model", format!("{} ({} parameters, {}x{}x{})", r.model, r.parameters, r.channels, r.image_size, r.image_size)),
        ("device", format!("{} ({} threads, {}{})", r.device, r.threads, r.precision, if r.autocast_bf16 { ", bf16 autocast" } else { "" })),
        ("forward FLOPs / image", human_flops(r.flops_per_image_forward)),
        ("train FLOPs / image", format!("{} (3 x forward)", human_flops(r.flops_per_image_train))),
        (
            "train step",
            format!(
                "{:.4} s (min {:.4}, max {:.4}; batch {} x {}, {} timed after {} warm-up)",
                r.train_step_s, r.train_step_min_s, r.train_step_max_s, r.batch, r.grad_accum, r.timed_steps, r.warmup_steps
            ),
        ),
        ("train images/s", format!("{:.1}", r.train_images_per_s)),
        ("train phases", r.train_phases.map_or("- (give --profile)".to_string(), |p| phase_line(&p, r.train_step_s))),
        ("train TFLOP/s", format!("{:.4}", r.train_tflops)),
        ("train MFU", mfu(r.mfu)),
        ("sampling", format!("DDIM {} steps, guidance {} (no CFG doubling), batch {}: {:.2} s", r.sample_steps, r.guidance, r.sample_batch, r.sample_s)),
        ("sample images/s", format!("{:.2}", r.sample_images_per_s)),
        ("sample TFLOP/s", format!("{:.4}", r.sample_tflops)),
        ("sample MFU", mfu(r.sample_mfu)),
        ("peak memory", r.peak_memory_bytes.map_or("n/a".to_string(), |b| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)))),
    ];
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        println!("{k:<width$}  {v}");
    }
    println!("{:<width$}  {}", "", r.peak_memory_source);
    for n in &r.notes {
        println!("note: {n}");
    }
}
