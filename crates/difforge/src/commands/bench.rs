//! `difforge bench`: training and sampling throughput of a model preset or a run config, on
//! synthetic data, with FLOPs and (given the card's peak) model FLOPs utilisation.

use difforge_diffusion::Prediction;
use difforge_nn::UNetConfig;
use difforge_train::bench::{bench, BenchOptions, BenchReport};
use difforge_train::{Precision, RunConfig};
use std::path::Path;

const PRESETS: &[&str] = &["ref6m", "big64"];

#[derive(clap::Args)]
pub struct BenchArgs {
    /// A model preset (ref6m: the 6.1 M-parameter reference UNet at 32x32 RGB; big64) or a run
    /// config TOML file.
    #[arg(long, default_value = "ref6m")]
    pub model: String,
    /// Images per training micro-batch.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Timed training steps.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed training steps before them.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Images sampled at once (default: --batch).
    #[arg(long)]
    pub sample_batch: Option<usize>,
    /// DDIM steps of the sampling measurement.
    #[arg(long, default_value_t = 50)]
    pub sample_steps: usize,
    /// fp32, tf32 or bf16 (default: the config's train.precision; tf32 for presets).
    #[arg(long)]
    pub precision: Option<String>,
    /// auto, cpu, cuda or cuda:N (default: the config's train.device; auto for presets).
    #[arg(long)]
    pub device: Option<String>,
    /// libtorch CPU threads; 0 = one per core (default: the config's train.threads).
    #[arg(long)]
    pub threads: Option<usize>,
    /// The card's peak dense TFLOP/s at the precision used, to report model FLOPs utilisation.
    #[arg(long)]
    pub peak_tflops: Option<f64>,
    #[arg(long)]
    pub json: bool,
}

/// The run config of a preset: the default config with the preset's UNet, unconditional,
/// epsilon target without loss weighting (the same work per step as tools/bench_torch.py).
fn preset_config(name: &str, model: UNetConfig) -> anyhow::Result<RunConfig> {
    let mut cfg = RunConfig::default();
    cfg.data.channels = u32::try_from(model.in_channels)?;
    cfg.data.image_size = u32::try_from(model.image_size)?;
    cfg.model = UNetConfig { num_classes: 0, ..model };
    cfg.diffusion.prediction = Prediction::Epsilon;
    cfg.diffusion.min_snr_gamma = 0.0;
    cfg.diffusion.class_dropout = 0.0;
    cfg.resolve();
    cfg.validate().map_err(|e| anyhow::anyhow!("--model {name}: {e}"))?;
    Ok(cfg)
}

fn load_model_config(model: &str) -> anyhow::Result<RunConfig> {
    if let Some(preset) = UNetConfig::preset(model) {
        return preset_config(model, preset);
    }
    let path = Path::new(model);
    if !path.is_file() {
        anyhow::bail!("--model {model}: neither a preset ({}) nor a config file", PRESETS.join(", "));
    }
    Ok(RunConfig::load(Some(path), &[])?)
}

fn parse_precision(s: &str) -> anyhow::Result<Precision> {
    match s {
        "fp32" => Ok(Precision::Fp32),
        "tf32" => Ok(Precision::Tf32),
        "bf16" => Ok(Precision::Bf16),
        _ => anyhow::bail!("--precision {s}: expected fp32, tf32 or bf16"),
    }
}

fn check_device(s: &str) -> anyhow::Result<()> {
    let dev = difforge_train::device::parse_device(s).map_err(|_| anyhow::anyhow!("--device {s}: expected auto, cpu, cuda or cuda:N"))?;
    if let tch::Device::Cuda(n) = dev {
        let count = tch::Cuda::device_count();
        if n as i64 >= count {
            anyhow::bail!("--device {s}: {count} CUDA device(s) available");
        }
    }
    Ok(())
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    for (name, v) in [("--batch", args.batch), ("--steps", args.steps), ("--sample-steps", args.sample_steps)] {
        if v == 0 {
            anyhow::bail!("{name} 0: expected at least 1");
        }
    }
    if args.sample_batch == Some(0) {
        anyhow::bail!("--sample-batch 0: expected at least 1");
    }
    if let Some(p) = args.peak_tflops {
        if !(p.is_finite() && p > 0.0) {
            anyhow::bail!("--peak-tflops {p}: expected a positive number of TFLOP/s");
        }
    }
    let mut cfg = load_model_config(&args.model)?;
    if args.sample_steps > cfg.diffusion.timesteps {
        anyhow::bail!("--sample-steps {}: expected 1..={} (diffusion.timesteps)", args.sample_steps, cfg.diffusion.timesteps);
    }
    if let Some(p) = &args.precision {
        cfg.train.precision = parse_precision(p)?;
    }
    if let Some(d) = &args.device {
        check_device(d)?;
        cfg.train.device = d.clone();
    } else {
        check_device(&cfg.train.device)?;
    }
    if let Some(t) = args.threads {
        cfg.train.threads = t;
    }
    let opts = BenchOptions {
        model_name: args.model.clone(),
        batch: args.batch,
        steps: args.steps,
        warmup: args.warmup,
        sample_batch: args.sample_batch.unwrap_or(args.batch),
        sample_steps: args.sample_steps,
        peak_tflops: args.peak_tflops,
    };
    if !args.json {
        eprintln!(
            "benchmarking {} ({} warm-up + {} timed steps of batch {}, then DDIM {} at batch {})...",
            args.model, opts.warmup, opts.steps, opts.batch, opts.sample_steps, opts.sample_batch
        );
    }
    let report = bench(&cfg, &opts)?;
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
