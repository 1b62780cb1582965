//! `difforge eval`: metrics of a checkpoint (or of every kept checkpoint of a run) against real
//! data, printed, as JSON, and as an HTML report.

use crate::cli::EvalArgs;
use anyhow::Context;
use difforge_config::RunConfig;
use difforge_core::ConfigError;
use difforge_eval::cache::FeatureCache;
use difforge_eval::dataset::{resolve_dataset, SplitChoice};
use difforge_eval::evaluate::{evaluate, EvalData, EvalExtras, EvalOptions, EvalReport};
use difforge_eval::features::FeatureNet;
use difforge_eval::metrics::kid::KidConfig;
use difforge_eval::shape_judge::{AdherenceReport, ATTRIBUTES};
use difforge_model::checkpoint;
use std::path::{Path, PathBuf};

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let checkpoints = checkpoints(&args)?;
    let (first_dir, _) = checkpoints.last().context("no checkpoint to evaluate")?;
    let cfg = checkpoint::read_config(first_dir)?;
    let threads = args.threads.unwrap_or(cfg.train.threads);
    let device = super::sample::device(&args.device, &difforge_config::TrainConfig { threads, ..cfg.train.clone() })?;
    let mut opts = options(&args, &cfg)?;
    let mut nets = vec![FeatureNet::efficientnet(args.effnet_weights.as_deref(), device)?];
    if let Some(weights) = &args.inception_weights {
        nets.push(FeatureNet::inception(weights, device)?);
    }
    let cache = FeatureCache::new(args.cache_dir.clone().unwrap_or_else(FeatureCache::default_dir));
    // The checkpoints of one run share their data: load it once.
    let data = EvalData::load(&cfg, &opts)?;
    scale_to_data(&args, &data, &mut opts);
    check_counts(&args, &opts, &data)?;
    let mut history: Vec<EvalReport> = Vec::new();
    let mut last: Option<(EvalReport, EvalExtras)> = None;
    for (dir, step) in &checkpoints {
        let cfg = checkpoint::read_config(dir)?;
        let model = checkpoint::load_model(dir, &cfg, device).with_context(|| format!("loading {}", dir.display()))?;
        if checkpoints.len() > 1 {
            tracing::info!("evaluating {} (step {step})", dir.display());
        }
        let (report, extras) = evaluate(&model, dir.clone(), *step, &nets, &cache, &data, &opts)?;
        history.push(report.clone());
        last = Some((report, extras));
    }
    let (report, extras) = last.context("no checkpoint was evaluated")?;
    if let Some(dir) = &args.report {
        let page = difforge_eval::report::write(dir, &report, &extras, args.run.as_deref().or(run_of(&args.checkpoint)), &history)?;
        tracing::info!("report -> {}", page.display());
    }
    if args.json {
        return if history.len() > 1 { super::print_json(&serde_json::json!({ "checkpoints": history })) } else { super::print_json(&report) };
    }
    print_text(&history, &extras);
    Ok(())
}

/// Refuses, before any sample is generated, too few real images or samples for the metrics: a
/// covariance (Frechet distance) needs 2 rows, precision and recall's k nearest neighbours k + 1.
fn check_counts(args: &EvalArgs, opts: &EvalOptions, data: &EvalData) -> Result<(), ConfigError> {
    let need = (args.k + 1).max(2);
    let why = format!("2 for a covariance, --k + 1 = {} for precision and recall", args.k + 1);
    let real = data.real.images.size()[0] as usize;
    if real < need {
        let hint = match (&args.data, args.split.as_str()) {
            (None, "val") => "; the run's validation split is that small: use --split all (or train), or --data FOLDER",
            _ => "; use another --split or --data",
        };
        return Err(ConfigError::new(
            "--split",
            format!("{} ({real} images: {})", args.split, data.real.description),
            format!("at least {need} real images ({why}){hint}"),
        ));
    }
    if args.samples.is_none() && opts.n < need {
        return Err(ConfigError::new("--n", opts.n, format!("at least {need} samples ({why})")));
    }
    Ok(())
}

/// The checkpoint folders to evaluate with their steps: one, or every kept one of `--run`.
fn checkpoints(args: &EvalArgs) -> anyhow::Result<Vec<(PathBuf, u64)>> {
    let with_step = |dir: PathBuf| -> anyhow::Result<(PathBuf, u64)> {
        let step = checkpoint::read_state(&dir)?.step;
        Ok((dir, step))
    };
    match (&args.checkpoint, &args.run) {
        (Some(path), None) => Ok(vec![with_step(checkpoint::resolve(path)?)?]),
        (None, Some(run)) => {
            let kept = checkpoint::list(run)?;
            if kept.is_empty() {
                return Err(ConfigError::new(
                    "--run",
                    run.display(),
                    format!("a run folder with checkpoints (there are none in {})", run.join("checkpoints").display()),
                )
                .into());
            }
            kept.into_iter().map(|(_, dir)| with_step(dir)).collect()
        }
        _ => Err(ConfigError::problem("--checkpoint", "give exactly one of --checkpoint PATH or --run RUN_DIR").into()),
    }
}

/// The run folder a `--checkpoint` path belongs to (for the loss curves), if it is one.
fn run_of(checkpoint: &Option<PathBuf>) -> Option<&Path> {
    let path = checkpoint.as_deref()?;
    if path.join("metrics.jsonl").is_file() {
        return Some(path);
    }
    let run = path.parent()?.parent()?;
    run.join("metrics.jsonl").is_file().then_some(run)
}

/// Samples an evaluation generates unless `--n` says, and seed sets unless
/// `--consistency-sets` says, for a dataset of at least `SAMPLES_PER_IMAGE * DEFAULT_SAMPLES`
/// images.
const DEFAULT_SAMPLES: usize = 1000;
const DEFAULT_SEED_SETS: usize = 3;
/// On a smaller dataset (a fine-tune's folder) the default is this many samples per image:
/// more would not sharpen metrics measured against so few real images, and an SD sample costs
/// a full denoising each.
const SAMPLES_PER_IMAGE: usize = 10;

/// Scales the defaults of `--n` and `--consistency-sets` to the model's dataset (training and
/// held-out images together), and says so when it did.
fn scale_to_data(args: &EvalArgs, data: &EvalData, opts: &mut EvalOptions) {
    if args.samples.is_some() || args.n.is_some() {
        return;
    }
    let images = data.train.images.size()[0] as usize + data.heldout.as_ref().map_or(0, |h| h.size()[0] as usize);
    let scaled = images.saturating_mul(SAMPLES_PER_IMAGE).max(2);
    if scaled >= DEFAULT_SAMPLES {
        return;
    }
    opts.n = scaled;
    if args.consistency_sets.is_none() {
        opts.consistency_sets = 1;
    }
    tracing::info!(
        "eval: {scaled} samples ({SAMPLES_PER_IMAGE} per image of the model's {images}; --n to choose) in {} seed set{} (--consistency-sets for the spread)",
        opts.consistency_sets,
        if opts.consistency_sets == 1 { "" } else { "s" }
    );
}

fn options(args: &EvalArgs, cfg: &RunConfig) -> anyhow::Result<EvalOptions> {
    let n = args.n.unwrap_or(DEFAULT_SAMPLES);
    if args.samples.is_none() && !(2..=50_000).contains(&n) {
        return Err(ConfigError::new("--n", n, "2..=50000 (at least 2 samples are needed for a covariance)").into());
    }
    let real_data = match &args.data {
        Some(spec) => resolve_dataset(spec, &cfg.data)?,
        None => cfg.data.clone(),
    };
    let real_split = SplitChoice::parse(&args.split).ok_or_else(|| ConfigError::new("--split", &args.split, "val, train or all"))?;
    let classifier = args.classifier.clone().or_else(|| {
        let default = run_of(&args.checkpoint).or(args.run.as_deref())?.join("classifier");
        default.join(difforge_eval::judge::META_FILE).is_file().then_some(default)
    });
    if args.classifier.is_none() {
        if let Some(dir) = &classifier {
            tracing::info!("class accuracy: using the run's classifier {}", dir.display());
        }
    }
    if !(args.memorisation_threshold.is_finite() && args.memorisation_threshold > 0.0 && args.memorisation_threshold <= 10.0) {
        return Err(ConfigError::new("--memorisation-threshold", args.memorisation_threshold, "a fraction in (0, 10]").into());
    }
    for (flag, v, min) in
        [("--k", args.k, 1), ("--kid-subsets", args.kid_subsets, 1), ("--kid-subset-size", args.kid_subset_size, 2), ("--batch", args.batch, 1)]
    {
        if v < min {
            return Err(ConfigError::new(flag, v, format!("at least {min}")).into());
        }
    }
    Ok(EvalOptions {
        n,
        seed: args.seed,
        sampler: super::sample::sampler_config(&args.sampler, cfg)?,
        use_ema: !args.raw,
        batch: args.batch.max(1),
        feature_batch: 50,
        k: args.k,
        kid: KidConfig { subsets: args.kid_subsets, subset_size: args.kid_subset_size, seed: args.seed, ..KidConfig::default() },
        consistency_sets: args.consistency_sets.unwrap_or(DEFAULT_SEED_SETS).max(1),
        memorisation_threshold: args.memorisation_threshold,
        show_pairs: 10,
        real_data,
        real_split,
        classifier,
        samples_dir: args.samples.clone(),
        clip_model: args.clip_model.clone(),
    })
}

/// The shapes judge's scores of the samples against their prompts, withheld combos apart.
fn print_adherence(a: &AdherenceReport) {
    let groups = [("all", Some(&a.overall)), ("seen", a.seen.as_ref()), ("withheld", a.withheld.as_ref())];
    for (name, group) in groups.into_iter().filter_map(|(n, g)| g.filter(|g| g.images > 0).map(|g| (n, g))) {
        let named = ATTRIBUTES.iter().zip(group.attributes());
        let scores: Vec<String> = named.filter_map(|(name, s)| s.accuracy().map(|acc| format!("{name} {:.1}%", 100.0 * acc))).collect();
        let adherence = group.adherence().map_or("-".to_string(), |v| format!("{:.1}%", 100.0 * v));
        println!("    {name:<8} adherence {adherence} of {} samples; {}", group.images, scores.join(", "));
    }
}

fn print_text(history: &[EvalReport], extras: &EvalExtras) {
    for report in history {
        let s = &report.samples;
        println!("{} (step {}): {} samples vs {} real images ({})", report.checkpoint.display(), report.step, s.count, report.real.count, report.real.dataset);
        for f in &report.metrics {
            let m = &f.manifold;
            println!(
                "  {:<10} {:.4}   ({}-d {} features, {} samples / {} real)",
                f.network.metric, f.frechet_distance, f.network.dim, f.network.name, f.samples, f.real
            );
            println!("  KID        {:.5} ± {:.5}   ({} subsets of {})", f.kid.mean, f.kid.std, f.kid.subsets, f.kid.subset_size);
            println!(
                "  precision {:.3}  recall {:.3}  F1 {:.3}  density {:.3}  coverage {:.3}   (k = {}, {} samples / {} real)",
                m.precision, m.recall, m.f1, m.density, m.coverage, m.k, m.fake, m.real
            );
        }
        if let Some(c) = &report.classes {
            println!(
                "  class accuracy {:.1}% of {} samples (classifier: {:.1}% on real held-out images)",
                100.0 * c.accuracy,
                c.samples,
                100.0 * c.classifier_val_accuracy
            );
            let worst = c.per_class.iter().min_by(|a, b| a.f1.total_cmp(&b.f1));
            if let Some(w) = worst {
                println!("    lowest F1: class {} (precision {:.3}, recall {:.3}, F1 {:.3})", w.class, w.precision, w.recall, w.f1);
            }
        }
        if let Some(p) = &report.prompts {
            println!("  prompts: {} ({} distinct)", p.source, p.distinct);
            if let Some(c) = &p.clip_score {
                println!("    CLIP score ({}): samples {:.2}, real images with their captions {:.2}", c.model, c.samples, c.real);
            }
            if let Some(a) = &p.adherence {
                print_adherence(a);
            }
        }
        let m = &report.memorisation;
        println!(
            "  memorisation: {:.2}% of {} samples below {} x the training set's median neighbour distance{}",
            100.0 * m.fraction_below,
            m.samples,
            m.threshold,
            m.heldout_fraction_below.map_or(String::new(), |f| format!(" (held-out real images: {:.2}%)", 100.0 * f))
        );
        if let Some(c) = &report.consistency {
            println!(
                "  consistency: {} repeated images {}; {} over {} seed sets of {}: {:.4} ± {:.4}",
                c.repeated_images,
                if c.same_seed_identical { "bit-identical" } else { "NOT bit-identical" },
                report.metrics.first().map_or("FD", |f| f.network.metric),
                c.per_set.len(),
                c.samples_per_set,
                c.mean,
                c.std
            );
        }
    }
    for note in &extras.notes {
        println!("  note: {note}");
    }
    let cached: Vec<&str> = extras.real_features_cached.iter().map(|&c| if c { "cached" } else { "computed" }).collect();
    let total: f64 = extras.timings.iter().map(|(_, t)| t).sum();
    let parts: Vec<String> = extras.timings.iter().map(|(k, t)| format!("{k} {t:.1}s")).collect();
    println!("  time (last checkpoint): {total:.1} s: {}; real features {}", parts.join(", "), cached.join("/"));
}
