//! `difforge train`.

use crate::cli::TrainArgs;
use difforge_core::ConfigError;
use difforge_train::new_model::{is_new_model_run, makes_new_model, train_new_model, NewModelRun, NewModelStages};
use difforge_train::{train, TrainOptions, TrainSummary};
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
    let new_model = if resume { is_new_model_run(&out_dir) } else { makes_new_model(&config) };
    if !new_model {
        let summary = train(config, opts)?;
        return report(&summary, None, &out_dir, args.json);
    }
    match train_new_model((!resume).then_some(config), opts)? {
        NewModelRun::Trained(stages, summary) => report(&summary, Some(&stages), &out_dir, args.json),
        NewModelRun::VaeStopped(vae) => {
            if args.json {
                super::print_json(&serde_json::json!({ "stages": { "vae_training": vae } }))?;
            } else {
                super::vae::print_summary(&vae);
            }
            anyhow::bail!("stopped in the VAE stage ({}); continue with: difforge train --resume {}", vae.stopped_because, out_dir.display())
        }
    }
}

/// Prints how the run ended (as JSON with `json`), the stages before it first for a new model.
fn report(summary: &TrainSummary, stages: Option<&NewModelStages>, out_dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    if let Some(p) = summary.parallel.as_ref().filter(|p| p.rank != 0) {
        // Rank 0 reports for the run; the others only say they finished.
        tracing::info!("rank {} of {} finished at step {}", p.rank, p.world_size, summary.final_step);
        return Ok(());
    }
    if json {
        let mut value = serde_json::to_value(summary)?;
        if let (Some(stages), Some(map)) = (stages, value.as_object_mut()) {
            map.insert("stages".into(), serde_json::to_value(stages)?);
        }
        super::print_json(&value)?;
        if summary.diverged {
            anyhow::bail!("training diverged: {}", summary.stopped_because);
        }
        return Ok(());
    }
    if let Some(stages) = stages {
        if let Some(vae) = &stages.vae_training {
            super::vae::print_summary(vae);
        }
        println!("{}: the new model (VAE {}, fresh UNet and text encoder) trained below", stages.base.display(), stages.vae.display());
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
