//! The evaluation the trainer runs every `train.eval_every` steps: the same metrics as
//! `difforge eval` on `train.eval_samples` samples (always the same seeds, so evaluations are
//! comparable), against the run's validation split. The feature networks and the real features
//! are prepared at the first evaluation and kept.

use crate::cache::FeatureCache;
use crate::dataset::{load_split, SplitChoice};
use crate::evaluate::{asked_classes, classes, generate_set, prompts_of, EvalOptions};
use crate::features::FeatureNet;
use crate::metrics::frechet::{frechet_distance, Gaussian};
use crate::metrics::kid::{kid, KidConfig};
use crate::metrics::manifold::{manifold, DEFAULT_NEAREST_K};
use crate::EvalError;
use difforge_model::DiffusionModel;
use std::cell::RefCell;
use tch::Tensor;

/// Seed of the first evaluation sample (apart from the training seeds by construction).
const EVAL_SEED: u64 = 1_000_000;

#[derive(Default)]
pub struct TrainingEvaluator {
    prepared: RefCell<Option<Prepared>>,
}

struct Prepared {
    nets: Vec<FeatureNet>,
    /// Per network: the real features and their Gaussian.
    real: Vec<(Tensor, Gaussian)>,
    /// The dataset's class names (checked against the classifier's).
    class_names: Vec<String>,
    /// A text model's prompts: the validation images' captions (see `prompts_of`).
    prompts: Option<Vec<String>>,
    opts: EvalOptions,
}

impl TrainingEvaluator {
    pub fn new() -> TrainingEvaluator {
        TrainingEvaluator::default()
    }
}

fn prepare(model: &DiffusionModel) -> Result<Prepared, EvalError> {
    let cfg = model.config();
    let t = &cfg.train;
    let mut nets = vec![FeatureNet::efficientnet(None, model.device())?];
    if let Some(weights) = &t.eval_inception_weights {
        nets.push(FeatureNet::inception(weights, model.device())?);
    }
    let real = load_split(&cfg.data, cfg.seed, SplitChoice::Val)?;
    let cache = FeatureCache::new(FeatureCache::default_dir());
    let mut stats = Vec::new();
    for net in &nets {
        let (features, _) = cache.features(net, &real.images, 50, |_| {})?;
        let gaussian = Gaussian::fit(&features)?;
        stats.push((features, gaussian));
    }
    let opts = EvalOptions {
        n: t.eval_samples,
        seed: EVAL_SEED,
        sampler: cfg.sample.clone(),
        use_ema: true,
        batch: 100,
        feature_batch: 50,
        k: DEFAULT_NEAREST_K,
        kid: KidConfig { subsets: 20, subset_size: 1000, seed: EVAL_SEED, ..KidConfig::default() },
        consistency_sets: 1,
        memorisation_threshold: 0.5,
        show_pairs: 0,
        real_data: cfg.data.clone(),
        real_split: SplitChoice::Val,
        classifier: t.eval_classifier.clone(),
        samples_dir: None,
        clip_model: None,
    };
    let prompts = prompts_of(model, &real)?;
    Ok(Prepared { nets, real: stats, class_names: real.class_names, prompts, opts })
}

impl Prepared {
    fn evaluate(&self, model: &DiffusionModel) -> Result<Vec<(String, f64)>, EvalError> {
        let asked = asked_classes(model, self.opts.n);
        let samples = generate_set(model, &self.opts, self.opts.seed, asked.as_deref(), self.prompts.as_deref(), None)?;
        let mut out = Vec::new();
        for (i, (net, (real_features, real_gaussian))) in self.nets.iter().zip(&self.real).enumerate() {
            let features = net.extract(&samples, self.opts.feature_batch, |_| {})?;
            let fd = frechet_distance(real_gaussian, &Gaussian::fit(&features)?)?;
            out.push((if net.info.metric == "FID" { "fid" } else { "fd_effnet" }.to_string(), fd));
            if i == 0 {
                let k = kid(real_features, &features, &self.opts.kid)?;
                let m = manifold(real_features, &features, self.opts.k)?;
                out.push(("kid".into(), k.mean));
                for (name, v) in [("precision", m.precision), ("recall", m.recall), ("f1", m.f1), ("density", m.density), ("coverage", m.coverage)] {
                    out.push((name.into(), v));
                }
            }
        }
        if let (Some(dir), Some(asked)) = (&self.opts.classifier, &asked) {
            out.push(("class_accuracy".into(), classes(dir, model, &samples, asked, &self.class_names)?.accuracy));
        }
        Ok(out)
    }
}

impl TrainingEvaluator {
    /// The metrics of `model` (names as in difforge_config::EVAL_METRICS); the feature networks
    /// and real features are prepared at the first call.
    pub fn evaluate(&self, model: &DiffusionModel, _step: u64) -> Result<Vec<(String, f64)>, String> {
        let mut prepared = self.prepared.borrow_mut();
        if prepared.is_none() {
            *prepared = Some(prepare(model).map_err(|e| e.to_string())?);
        }
        match prepared.as_ref() {
            Some(p) => p.evaluate(model).map_err(|e| e.to_string()),
            None => Err("the evaluation could not be prepared".into()),
        }
    }
}
