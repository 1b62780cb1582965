//! `difforge train`.

use crate::cli::TrainArgs;
use anyhow::Context;
use difforge_train::{checkpoint, train, TrainOptions};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

fn default_out(args: &TrainArgs) -> PathBuf {
    let name = args.config.config.as_deref().and_then(|p| p.file_stem()).map_or("digits".to_string(), |s| s.to_string_lossy().into_owned());
    PathBuf::from("runs").join(name)
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let config = super::config::load(&args.config)?;
    let (out_dir, resume) = match &args.resume {
        Some(dir) => (dir.clone(), true),
        None => (args.out.clone().unwrap_or_else(|| default_out(&args)), false),
    };
    if !resume && !checkpoint::list(&out_dir)?.is_empty() {
        anyhow::bail!("{} already holds checkpoints: continue it with --resume {0}, or choose another --out", out_dir.display());
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing the signal handler")?;
    }
    let opts = TrainOptions { out_dir: out_dir.clone(), resume, stop };
    let summary = train(config, &opts)?;
    if args.json {
        return super::print_json(&summary);
    }
    println!("{}: step {}/{}, {}", out_dir.display(), summary.final_step, summary.steps_planned, summary.stopped_because);
    println!("  loss (mean of last 100 steps)  {:.4}", summary.mean_loss_last_100);
    println!("  wall time                      {:.1} s ({:.0} images/s on {}, {} threads)", summary.wall_time_s, summary.images_per_s, summary.device, summary.threads);
    println!("  parameters                     {}", summary.parameters);
    if let Some(c) = &summary.checkpoint {
        println!("  checkpoint                     {}", c.display());
    }
    if let Some(g) = &summary.sample_grid {
        println!("  samples                        {}", g.display());
    }
    println!("  metrics                        {}", out_dir.join("metrics.jsonl").display());
    println!("  summary                        {}", out_dir.join("summary.json").display());
    if summary.final_step < summary.steps_planned {
        println!("resume with: difforge train --resume {}", out_dir.display());
    }
    Ok(())
}
