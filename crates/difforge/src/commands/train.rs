//! `difforge train`.

use crate::cli::TrainArgs;
use difforge_core::ConfigError;
use difforge_train::{train, TrainOptions};
use std::path::PathBuf;

fn default_out(args: &TrainArgs) -> PathBuf {
    let name = args.config.config.as_deref().and_then(|p| p.file_stem()).map_or("digits".to_string(), |s| s.to_string_lossy().into_owned());
    PathBuf::from("runs").join(name)
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let config = if args.resume.is_some() {
        if let Some(path) = &args.config.config {
            return Err(ConfigError::new(
                "--config",
                path.display(),
                "nothing with --resume: a resumed run keeps its config (use --set train.KEY=VALUE to change [train] keys)",
            )
            .into());
        }
        difforge_config::RunConfig::default()
    } else {
        super::config::load(&args.config)?
    };
    let (out_dir, resume) = match &args.resume {
        Some(dir) => (dir.clone(), true),
        None => (args.out.clone().unwrap_or_else(|| default_out(&args)), false),
    };
    let stop = super::stop_on_signals()?;
    let resume_sets = if resume { args.config.sets.clone() } else { Vec::new() };
    let opts = TrainOptions { out_dir: out_dir.clone(), resume, overwrite: args.overwrite, resume_sets, stop, evaluator: Some(sample_evaluation()) };
    let summary = train(config, opts)?;
    if let Some(p) = summary.parallel.as_ref().filter(|p| p.rank != 0) {
        // Rank 0 reports for the run; the others only say they finished.
        tracing::info!("rank {} of {} finished at step {}", p.rank, p.world_size, summary.final_step);
        return Ok(());
    }
    if args.json {
        super::print_json(&summary)?;
        if summary.diverged {
            anyhow::bail!("training diverged: {}", summary.stopped_because);
        }
        return Ok(());
    }
    println!("{}: step {}/{}, {}", out_dir.display(), summary.final_step, summary.steps_planned, summary.stopped_because);
    println!("  loss (mean of last 100 steps)  {:.4}", summary.mean_loss_last_100);
    println!(
        "  wall time                      {:.1} s ({:.0} images/s on {}, {} threads)",
        summary.wall_time_s, summary.images_per_s, summary.device, summary.threads
    );
    println!("  parameters                     {}", summary.parameters);
    if let Some(p) = &summary.parallel {
        let agree = if p.rank_checksums.iter().all(|c| *c == p.rank_checksums[0]) { "equal weights on every rank" } else { "WEIGHTS DIFFER BETWEEN RANKS" };
        println!("  processes                      {} ({}), {agree}", p.world_size, p.backend);
    }
    if let Some(v) = &summary.final_validation {
        println!("  validation loss (raw / EMA)    {:.4} / {:.4} at step {}", v.val_loss, v.val_loss_ema, v.step);
    }
    if let Some(b) = &summary.best {
        println!("  best {:<25} {:.4} at step {}", b.metric, b.value, b.step);
    }
    if summary.skipped_steps + u64::from(summary.rollbacks) + summary.loss_spikes > 0 {
        println!("  skipped steps / rollbacks / loss spikes  {} / {} / {}", summary.skipped_steps, summary.rollbacks, summary.loss_spikes);
    }
    if let Some(c) = &summary.checkpoint {
        println!("  checkpoint                     {}", c.display());
    }
    if let Some(g) = &summary.sample_grid {
        println!("  samples                        {}", g.display());
    }
    println!("  metrics                        {}", out_dir.join("metrics.jsonl").display());
    println!("  summary                        {}", out_dir.join("summary.json").display());
    if summary.diverged {
        anyhow::bail!("training diverged: {} (details in {})", summary.stopped_because, out_dir.join("metrics.jsonl").display());
    }
    if summary.final_step < summary.steps_planned && summary.stopped_because.starts_with("interrupted") {
        println!("resume with: difforge train --resume {}", out_dir.display());
    }
    Ok(())
}

/// The sample-quality evaluation `train.eval_every` runs (difforge-eval's, behind the trainer's
/// hook).
pub fn sample_evaluation() -> difforge_train::Evaluate {
    let evaluator = difforge_eval::training::TrainingEvaluator::new();
    Box::new(move |model, step| evaluator.evaluate(model, step))
}
