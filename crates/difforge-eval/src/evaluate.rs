//! One evaluation of one checkpoint: generate samples (or read them), extract features of the
//! samples and of real images, and compute every metric. Everything random is fixed by the
//! options (sample seeds, KID subset seed), so the same command gives the same numbers.

use crate::cache::FeatureCache;
use crate::classes::{class_report, ClassReport};
use crate::dataset::{load_split, RealImages, SplitChoice};
use crate::features::{FeatureNet, FeatureNetInfo};
use crate::memorisation::{memorisation, Memorisation};
use crate::metrics::frechet::{frechet_distance, Gaussian};
use crate::metrics::kid::{kid, Kid, KidConfig};
use crate::metrics::manifold::{manifold, Manifold};
use crate::shape_judge::AdherenceReport;
use crate::EvalError;
use difforge_config::RunConfig;
use difforge_core::Progress;
use difforge_data::DataConfig;
use difforge_diffusion::SamplerConfig;
use difforge_model::generate::{classes_in_turn, generate};
use difforge_model::{Condition, ConditionKind, DiffusionModel, GenerateSpec, Weights};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Kind, Tensor};

/// What to evaluate and how.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Samples to generate.
    pub n: usize,
    /// Seed of the first sample; sample i uses seed + i.
    pub seed: u64,
    pub sampler: SamplerConfig,
    pub use_ema: bool,
    /// Images per generation call (every call is padded to this size, so a sample does not
    /// depend on what it was batched with).
    pub batch: usize,
    pub feature_batch: usize,
    /// k of the k-NN manifolds (precision, recall, density, coverage).
    pub k: usize,
    pub kid: KidConfig,
    /// Sample sets (seeds) over which the spread of the Frechet distance is reported; 1 = only
    /// the main set.
    pub consistency_sets: usize,
    pub memorisation_threshold: f64,
    /// Closest sample/training pairs to show.
    pub show_pairs: usize,
    /// The real images: a dataset and which split of it.
    pub real_data: DataConfig,
    pub real_split: SplitChoice,
    /// The classifier that labels samples for class accuracy (a `classifier train` folder).
    pub classifier: Option<PathBuf>,
    /// Evaluate the images of this folder instead of generating samples (class subfolders named
    /// like the model's classes give the classes asked for).
    pub samples_dir: Option<PathBuf>,
    /// A transformers CLIPModel folder: a text model's samples get a CLIP score.
    pub clip_model: Option<PathBuf>,
}

/// Metrics on one feature network.
#[derive(Debug, Clone, Serialize)]
pub struct FeatureMetrics {
    pub network: FeatureNetInfo,
    /// Frechet distance ("FD-EffNet" or "FID").
    pub frechet_distance: f64,
    pub kid: Kid,
    pub manifold: Manifold,
    pub samples: usize,
    pub real: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Consistency {
    /// Images generated a second time with the same seeds.
    pub repeated_images: usize,
    /// Whether they came out bit-identical.
    pub same_seed_identical: bool,
    /// The main network's Frechet distance on each sample set (first seed of each set).
    pub per_set: Vec<(u64, f64)>,
    pub mean: f64,
    /// Sample standard deviation over the sets (0 with one set).
    pub std: f64,
    pub samples_per_set: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct SampleInfo {
    pub count: usize,
    /// The folder they were read from (None: generated with the settings below).
    pub source: Option<PathBuf>,
    pub sampler: String,
    pub steps: usize,
    pub guidance: f64,
    pub seed: u64,
    pub ema: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RealInfo {
    pub count: usize,
    pub dataset: String,
}

/// Everything an evaluation measured (the JSON report).
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub checkpoint: PathBuf,
    pub step: u64,
    pub samples: SampleInfo,
    pub real: RealInfo,
    pub metrics: Vec<FeatureMetrics>,
    pub classes: Option<ClassReport>,
    /// For a text model: the prompts the samples were generated from, and how well they follow
    /// them where a judge can tell.
    pub prompts: Option<PromptReport>,
    pub memorisation: Memorisation,
    /// None when the samples were read from a folder.
    pub consistency: Option<Consistency>,
}

/// The prompts of a text model's samples: the captions of the real images, in turn.
#[derive(Debug, Clone, Serialize)]
pub struct PromptReport {
    /// Where they come from: "captions of the 200 images of data/shapes, validation split".
    pub source: String,
    pub distinct: usize,
    /// The shapes judge's scores (colour, kind, size, position, background; withheld combos
    /// apart when the data folder has a shapes.json), when every prompt is a shapes caption.
    pub adherence: Option<AdherenceReport>,
    /// With a CLIP model: the samples' and the real images' CLIP scores against their texts.
    pub clip_score: Option<crate::clip_score::ClipScoreReport>,
}

/// What the report shows besides the numbers, and how long each part took (kept out of the
/// JSON so that it stays identical from run to run).
pub struct EvalExtras {
    pub samples: Tensor,
    pub asked: Option<Vec<i64>>,
    pub real: Tensor,
    pub train: Tensor,
    pub timings: Vec<(String, f64)>,
    /// Per network: whether the real features came from the cache.
    pub real_features_cached: Vec<bool>,
    pub notes: Vec<String>,
}

/// The real images an evaluation compares with, loaded once: every checkpoint of a run (and
/// every evaluation during training) shares them.
pub struct EvalData {
    /// The images the samples are compared with (`opts.real_data`, `opts.real_split`).
    pub real: RealImages,
    /// The model's training split (memorisation, class names).
    pub train: RealImages,
    /// Held-out images of the model's own dataset (the memorisation baseline).
    pub heldout: Option<Tensor>,
    /// Seconds the loading took.
    pub seconds: f64,
}

impl EvalData {
    pub fn load(cfg: &RunConfig, opts: &EvalOptions) -> Result<EvalData, EvalError> {
        let start = Instant::now();
        let real = load_split(&opts.real_data, cfg.seed, opts.real_split)?;
        let train = load_split(&cfg.data, cfg.seed, SplitChoice::Train)?;
        let heldout = if cfg.data.val_path.is_some() || cfg.data.val_fraction <= 0.0 {
            None
        } else if opts.real_split == SplitChoice::Val && opts.real_data == cfg.data {
            Some(real.images.shallow_clone())
        } else {
            load_split(&cfg.data, cfg.seed, SplitChoice::Val).ok().map(|h| h.images)
        };
        Ok(EvalData { real, train, heldout, seconds: start.elapsed().as_secs_f64() })
    }
}

/// Evaluates `model` (at `checkpoint`, trained `step` steps) with `nets` (the first one is the
/// main network, whose Frechet distance the consistency check repeats) against `data`.
pub fn evaluate(
    model: &DiffusionModel,
    checkpoint: PathBuf,
    step: u64,
    nets: &[FeatureNet],
    cache: &FeatureCache,
    data: &EvalData,
    opts: &EvalOptions,
) -> Result<(EvalReport, EvalExtras), EvalError> {
    let mut clock = Clock::start();
    clock.laps.push(("load real images".to_string(), data.seconds));
    let (real, train) = (&data.real, &data.train);

    let prompts = prompts_of(model, real)?;
    let Samples { images: samples, asked, repeat } = obtain_samples(model, opts, train, prompts.as_deref(), &mut clock)?;
    let n = samples.size()[0] as usize;
    let (metrics, cached, main_real) = feature_metrics_all(nets, cache, &real.images, &samples, opts, &mut clock)?;
    let consistency = match repeat {
        Some((repeated, identical)) => {
            let per_set = fd_over_seed_sets(model, nets, &main_real, metrics[0].frechet_distance, asked.as_deref(), prompts.as_deref(), opts)?;
            clock.lap("consistency sample sets");
            Some(consistency(repeated, identical, per_set, opts.n))
        }
        None => None,
    };
    let mut notes = Vec::new();
    if n < 1000 || metrics.iter().any(|m| m.real < 1000) {
        notes.push(format!("Frechet distance and KID depend on the number of images (FD is biased upwards at small N): compare numbers only at the same counts ({n} samples, {} real images here)", metrics[0].real));
    }
    let classes = match (&opts.classifier, &asked) {
        (Some(dir), Some(asked)) => Some(classes(dir, model, &samples, asked, &train.class_names)?),
        (Some(_), None) => {
            notes.push(
                "class accuracy skipped: no classes were asked for (an unconditional model, or sample subfolders not named like the model's classes)"
                    .to_string(),
            );
            None
        }
        (None, Some(_)) => {
            notes.push("class accuracy skipped: no classifier (train one with `difforge classifier train`, pass --classifier)".to_string());
            None
        }
        (None, None) => None,
    };
    clock.lap("class accuracy");
    let prompt_report = match &prompts {
        Some(p) if opts.samples_dir.is_none() => Some(prompt_report(p, real, &samples, opts, model.device())?),
        _ => None,
    };
    clock.lap("prompt adherence");
    let memo = memorisation(&samples, &train.images, &train.ids, data.heldout.as_ref(), opts.memorisation_threshold, opts.show_pairs)?;
    clock.lap("memorisation");

    let report = EvalReport {
        checkpoint,
        step,
        samples: SampleInfo {
            count: n,
            source: opts.samples_dir.clone(),
            sampler: opts.sampler.sampler.name().to_string(),
            steps: opts.sampler.steps,
            guidance: opts.sampler.guidance,
            seed: opts.seed,
            ema: opts.use_ema,
        },
        real: RealInfo { count: real.images.size()[0] as usize, dataset: real.description.clone() },
        metrics,
        classes,
        prompts: prompt_report,
        memorisation: memo,
        consistency,
    };
    let extras = EvalExtras {
        samples,
        asked,
        real: real.images.shallow_clone(),
        train: train.images.shallow_clone(),
        timings: clock.laps,
        real_features_cached: cached,
        notes,
    };
    Ok((report, extras))
}

/// The images evaluated, the classes they were asked for, and for generated ones (images
/// repeated, bit-identical?) from generating the first batch again.
struct Samples {
    images: Tensor,
    asked: Option<Vec<i64>>,
    repeat: Option<(usize, bool)>,
}

/// A text model's prompts: the real images' captions (in order; sample i gets caption i modulo
/// their number), so the samples and the real images describe the same things. None for other
/// models.
pub(crate) fn prompts_of(model: &DiffusionModel, real: &RealImages) -> Result<Option<Vec<String>>, EvalError> {
    if model.family().condition_kind() != ConditionKind::Text {
        return Ok(None);
    }
    let captions: Vec<String> = real.captions.iter().flatten().filter(|c| !c.trim().is_empty()).cloned().collect();
    if captions.is_empty() {
        return Err(EvalError::Input(format!(
            "the real images ({}) have no captions: a text model is evaluated on the captions of held-out images (caption sidecars or metadata.jsonl)",
            real.description
        )));
    }
    Ok(Some(captions))
}

/// The prompt section of the report: with the shapes judge when every prompt is a shapes
/// caption (withheld combos from the data folder's shapes.json, if it has one), and the CLIP
/// score when a CLIP model is given.
fn prompt_report(prompts: &[String], real: &RealImages, samples: &Tensor, opts: &EvalOptions, device: tch::Device) -> Result<PromptReport, EvalError> {
    let distinct = prompts.iter().collect::<std::collections::BTreeSet<_>>().len();
    let source = format!("captions of the {} images of {}", prompts.len(), real.description);
    let judged = prompts.iter().all(|p| crate::shape_judge::parse_caption(p).is_some());
    let adherence = if judged {
        let manifest = opts.real_data.path.as_ref().map(|d| d.join(difforge_data::synth::shapes::MANIFEST_FILE)).filter(|p| p.is_file());
        let withheld = manifest.map(|m| difforge_data::synth::ShapesManifest::read(&m)).transpose()?.map(|m| m.withheld);
        let images = crate::shape_judge::rgb_images(samples)?;
        let items: Vec<(String, image::RgbImage)> = images.into_iter().enumerate().map(|(i, img)| (prompts[i % prompts.len()].clone(), img)).collect();
        Some(crate::shape_judge::adherence(&items, withheld.as_deref()))
    } else {
        None
    };
    let clip_score = match &opts.clip_model {
        Some(dir) => {
            let captioned = captioned_images(real)?;
            Some(crate::clip_score::clip_scores(dir, samples, prompts, &captioned.0, &captioned.1, device)?)
        }
        None => None,
    };
    Ok(PromptReport { source, distinct, adherence, clip_score })
}

/// The real images that have a caption, and their captions.
fn captioned_images(real: &RealImages) -> Result<(Tensor, Vec<String>), EvalError> {
    let (rows, captions): (Vec<i64>, Vec<String>) =
        real.captions.iter().enumerate().filter_map(|(i, c)| c.as_ref().filter(|c| !c.trim().is_empty()).map(|c| (i as i64, c.clone()))).unzip();
    Ok((real.images.index_select(0, &Tensor::from_slice(&rows)), captions))
}

/// Generates the samples, or reads them from `opts.samples_dir`.
fn obtain_samples(model: &DiffusionModel, opts: &EvalOptions, train: &RealImages, prompts: Option<&[String]>, clock: &mut Clock) -> Result<Samples, EvalError> {
    if let Some(dir) = &opts.samples_dir {
        let cfg = model.config();
        let (images, asked) = read_samples(dir, &cfg.data, &train.class_names, cfg.seed)?;
        clock.lap("read samples");
        return Ok(Samples { images, asked, repeat: None });
    }
    let asked = asked_classes(model, opts.n);
    let samples = generate_set(model, opts, opts.seed, asked.as_deref(), prompts, Some("sampling"))?;
    clock.lap("generate samples");
    let repeat = opts.batch.min(opts.n);
    let again = generate_set(model, &EvalOptions { n: repeat, ..opts.clone() }, opts.seed, asked.as_deref().map(|a| &a[..repeat]), prompts, Some("repeat"))?;
    let identical = again.equal(&samples.narrow(0, 0, repeat as i64));
    clock.lap("repeat samples (bit-identical check)");
    Ok(Samples { images: samples, asked, repeat: Some((repeat, identical)) })
}

/// Metrics on every network; whether each network's real features came from the cache; the main
/// network's real Gaussian (for the consistency check).
fn feature_metrics_all(
    nets: &[FeatureNet],
    cache: &FeatureCache,
    real: &Tensor,
    samples: &Tensor,
    opts: &EvalOptions,
    clock: &mut Clock,
) -> Result<(Vec<FeatureMetrics>, Vec<bool>, Gaussian), EvalError> {
    let (mut metrics, mut cached, mut main_real) = (Vec::new(), Vec::new(), None);
    for net in nets {
        let (real_features, hit) = cache.features(net, real, opts.feature_batch, progress_fn(&format!("{} real", net.info.name), real.size()[0]))?;
        let sample_features = net.extract(samples, opts.feature_batch, progress_fn(&format!("{} samples", net.info.name), samples.size()[0]))?;
        metrics.push(feature_metrics(net, &real_features, &sample_features, opts)?);
        cached.push(hit);
        if main_real.is_none() {
            main_real = Some(Gaussian::fit(&real_features)?);
        }
        clock.lap(&format!("{} features and metrics", net.info.name));
    }
    let main_real = main_real.ok_or_else(|| EvalError::Input("no feature network".into()))?;
    Ok((metrics, cached, main_real))
}

/// The main network's Frechet distance for each of `opts.consistency_sets` sample sets (the first
/// is the main set, already scored as `first`); set k uses seeds from seed + k n.
fn fd_over_seed_sets(
    model: &DiffusionModel,
    nets: &[FeatureNet],
    real: &Gaussian,
    first: f64,
    asked: Option<&[i64]>,
    prompts: Option<&[String]>,
    opts: &EvalOptions,
) -> Result<Vec<(u64, f64)>, EvalError> {
    let main_net = nets.first().ok_or_else(|| EvalError::Input("no feature network".into()))?;
    let mut per_set = vec![(opts.seed, first)];
    for set in 1..opts.consistency_sets {
        let seed = opts.seed + (set * opts.n) as u64;
        let images = generate_set(model, opts, seed, asked, prompts, Some(&format!("seed set {}", set + 1)))?;
        let features = main_net.extract(&images, opts.feature_batch, |_| {})?;
        per_set.push((seed, frechet_distance(real, &Gaussian::fit(&features)?)?));
    }
    Ok(per_set)
}

/// The images of a folder, preprocessed like the training data; when its class subfolders carry
/// the model's class names, the classes asked for.
fn read_samples(dir: &std::path::Path, data: &DataConfig, class_names: &[String], seed: u64) -> Result<(Tensor, Option<Vec<i64>>), EvalError> {
    let folder = DataConfig { labels_path: None, val_path: None, class_names: Vec::new(), ..data.for_folder(dir) };
    let set = load_split(&folder, seed, SplitChoice::All)?;
    let asked: Option<Vec<i64>> = if set.class_names.is_empty() || class_names.is_empty() {
        None
    } else {
        set.labels
            .iter()
            .map(|&l| {
                usize::try_from(l).ok().and_then(|l| set.class_names.get(l)).and_then(|name| class_names.iter().position(|c| c == name)).map(|c| c as i64)
            })
            .collect()
    };
    Ok((set.images, asked))
}

/// Classes in turn (0, 1, 2, ...) for a class-conditional model, else None.
pub(crate) fn asked_classes(model: &DiffusionModel, n: usize) -> Option<Vec<i64>> {
    let k = model.family().condition_kind().classes()?;
    Some((0..n as i64).map(|i| i % k).collect())
}

/// `opts.n` samples with seeds `seed ..`, generated `opts.batch` at a time (padded), for the
/// classes `asked`, else the `prompts` in turn, else unconditional; `label` names the progress
/// bar (None: quiet).
pub(crate) fn generate_set(
    model: &DiffusionModel,
    opts: &EvalOptions,
    seed: u64,
    asked: Option<&[i64]>,
    prompts: Option<&[String]>,
    label: Option<&str>,
) -> Result<Tensor, EvalError> {
    let conditions: Vec<Condition> = match (asked, prompts) {
        (Some(a), _) => a.iter().map(|&c| Condition::Class(c)).collect(),
        (None, Some(p)) if !p.is_empty() => (0..opts.n).map(|i| Condition::Text(p[i % p.len()].clone())).collect(),
        _ => classes_in_turn(ConditionKind::Nothing, opts.n),
    };
    let mut parts = Vec::new();
    let mut progress = label.map(|l| Progress::new(l, opts.n as u64, 0));
    let chunk = opts.batch.max(1);
    let mut start = 0;
    while start < opts.n {
        let len = chunk.min(opts.n - start);
        let spec = GenerateSpec {
            conditions: conditions[start..start + len].to_vec(),
            seeds: (start..start + len).map(|i| seed + i as u64).collect(),
            sampler: &opts.sampler,
            weights: Weights::ema(opts.use_ema),
            max_batch: chunk,
            fixed_batch: true,
            negatives: Vec::new(),
            size: None,
        };
        parts.push(generate(model, &spec)?);
        start += len;
        if let Some(p) = progress.as_mut() {
            p.update(start as u64, "images");
        }
    }
    if let Some(p) = &progress {
        p.finish();
    }
    if parts.is_empty() {
        return Err(difforge_core::ConfigError::new("--n", opts.n, "at least 1").into());
    }
    Ok(Tensor::cat(&parts, 0))
}

fn progress_fn(label: &str, total: i64) -> impl FnMut(usize) {
    let mut progress = Progress::new(label, total.max(0) as u64, 0);
    move |done| {
        progress.update(done as u64, "images");
        if done as i64 >= total {
            progress.finish();
        }
    }
}

fn feature_metrics(net: &FeatureNet, real: &Tensor, fake: &Tensor, opts: &EvalOptions) -> Result<FeatureMetrics, EvalError> {
    let fd = frechet_distance(&Gaussian::fit(real)?, &Gaussian::fit(fake)?)?;
    Ok(FeatureMetrics {
        network: net.info.clone(),
        frechet_distance: fd,
        kid: kid(real, fake, &opts.kid)?,
        manifold: manifold(real, fake, opts.k)?,
        samples: fake.size()[0] as usize,
        real: real.size()[0] as usize,
    })
}

fn consistency(repeated_images: usize, same_seed_identical: bool, per_set: Vec<(u64, f64)>, samples_per_set: usize) -> Consistency {
    let values: Vec<f64> = per_set.iter().map(|(_, v)| *v).collect();
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let std = if values.len() > 1 { (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() } else { 0.0 };
    Consistency { repeated_images, same_seed_identical, per_set, mean, std, samples_per_set }
}

/// Labels the samples with the classifier and scores them against the classes asked for. The
/// classifier must know the model's classes by the same names, in the same order.
pub(crate) fn classes(
    dir: &std::path::Path,
    model: &DiffusionModel,
    samples: &Tensor,
    asked: &[i64],
    class_names: &[String],
) -> Result<ClassReport, EvalError> {
    let judge = crate::judge::load_judge(dir, model.device())
        .map_err(|e| difforge_core::ConfigError::new("--classifier", dir.display(), format!("a folder written by `difforge classifier train` ({e})")))?;
    let names = &judge.meta.class_names;
    let k = model.family().condition_kind().classes().unwrap_or(0) as usize;
    if names.len() != k || (!class_names.is_empty() && class_names != names.as_slice()) {
        return Err(difforge_core::ConfigError::new(
            "--classifier",
            dir.display(),
            format!("a classifier of the model's {k} classes ({}), not of {}", class_names.join(", "), names.join(", ")),
        )
        .into());
    }
    let predicted = crate::judge::predict(&judge.net, &samples.to_kind(Kind::Float), judge.device)?;
    Ok(class_report(asked, &predicted, names, judge.meta.val_accuracy))
}

/// Wall time per stage.
struct Clock {
    laps: Vec<(String, f64)>,
    last: Instant,
}

impl Clock {
    fn start() -> Clock {
        Clock { laps: Vec::new(), last: Instant::now() }
    }

    fn lap(&mut self, name: &str) {
        let now = Instant::now();
        self.laps.push((name.to_string(), now.duration_since(self.last).as_secs_f64()));
        self.last = now;
    }
}
