//! `difforge classifier train|judge`.

use crate::cli::{ConfigArgs, SamplingArgs};
use difforge_core::ConfigError;
use difforge_eval::judge::{judge as judge_samples, load_judge, train_classifier, ClassifierTraining};
use difforge_model::images::save_grid;
use difforge_model::{generate, Condition, GenerateSpec, Weights};
use std::path::Path;

pub fn train(config: &ConfigArgs, data: Option<&str>, out: &Path, steps: u64, device: &str, json: bool) -> anyhow::Result<()> {
    let mut cfg = super::config::load(config)?;
    if let Some(spec) = data {
        cfg.data = difforge_eval::dataset::resolve_dataset(spec, &cfg.data)?;
    }
    if steps == 0 {
        return Err(ConfigError::new("--steps", steps, "at least 1").into());
    }
    let dev = super::sample::device(device, &cfg.train)?;
    let opts = ClassifierTraining { steps, ..Default::default() };
    let meta = train_classifier(&cfg.data, cfg.seed, &opts, dev, out)?;
    if json {
        return super::print_json(&meta);
    }
    println!(
        "classifier -> {}: {:.2}% accurate on {} held-out validation images ({} training images, {} steps)",
        out.display(),
        100.0 * meta.val_accuracy,
        meta.val_images,
        meta.train_images,
        meta.steps
    );
    Ok(())
}

pub fn judge(sampling: &SamplingArgs, classifier: &Path, per_class: usize, first_class: i64, grid: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let (model, sampler, _) = super::sample::load(sampling)?;
    let judge = load_judge(classifier, model.device())?;
    let (model_k, k) = (model.family().condition_kind().classes().unwrap_or(0), judge.meta.class_names.len() as i64);
    if model_k == 0 || first_class < 0 || first_class + k > model_k {
        return Err(ConfigError::new("--first-class", first_class, format!("a start for the classifier's {k} classes within the model's {model_k}")).into());
    }
    if per_class == 0 {
        return Err(ConfigError::new("--per-class", per_class, "at least 1").into());
    }
    let asked: Vec<i64> = (0..k).flat_map(|c| std::iter::repeat_n(c, per_class)).collect();
    let conditions = asked.iter().map(|c| Condition::Class(c + first_class)).collect();
    let seeds = (0..asked.len() as u64).map(|i| sampling.seed + i).collect();
    let start = std::time::Instant::now();
    let spec = GenerateSpec {
        conditions,
        seeds,
        sampler: &sampler,
        weights: Weights::ema(!sampling.raw),
        max_batch: 256,
        fixed_batch: false,
        negatives: Vec::new(),
        size: None,
    };
    let images = generate(&model, &spec)?;
    let seconds = start.elapsed().as_secs_f64();
    let mut report = judge_samples(&judge, &images, &asked)?;
    if let Some(path) = grid {
        save_grid(&images, per_class, path)?;
        report.grid = Some(path.to_path_buf());
    }
    if json {
        return super::print_json(&report);
    }
    println!(
        "{:.1}% of {} samples ({} per class; {} {} steps, guidance {}) classified as the class asked for; sampling took {:.1} s",
        100.0 * report.accuracy,
        report.samples,
        per_class,
        sampler.sampler.name(),
        sampler.steps,
        sampler.guidance,
        seconds
    );
    let per: Vec<String> = report.per_class_accuracy.iter().enumerate().map(|(c, a)| format!("{}: {:.0}%", judge.meta.class_names[c], 100.0 * a)).collect();
    println!("per class: {}", per.join(", "));
    println!("mean pixel of the samples: {:.4}", report.mean_pixel);
    Ok(())
}
