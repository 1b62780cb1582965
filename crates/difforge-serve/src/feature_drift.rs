//! Output drift in feature space: FD-EffNet (the Frechet distance `difforge eval` reports) of the
//! last `drift_window` generated images against the model's validation images, recomputed every
//! `feature_drift_every` images. Pixel statistics miss a model that draws the wrong things with
//! the right brightness; this does not.
//!
//! It runs on its own thread and gets copies of the outputs through a bounded channel that the
//! worker never waits on: when the monitor falls behind, images are dropped (and counted), not
//! requests slowed. On a small CPU machine the feature network still competes with generation for
//! cores, which is why it is off unless configured.

use difforge_config::RunConfig;
use difforge_eval::cache::FeatureCache;
use difforge_eval::dataset::{load_split, SplitChoice};
use difforge_eval::features::FeatureNet;
use difforge_eval::metrics::frechet::{frechet_distance, Gaussian};
use prometheus::{Gauge, IntCounter};
use std::collections::VecDeque;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use tch::{Device, Tensor};

/// Batches of generated images waiting for the monitor, at most.
const QUEUE: usize = 16;

/// The worker's end: hands over copies of generated images.
pub struct FeatureDrift {
    tx: SyncSender<Tensor>,
    dropped: IntCounter,
}

impl FeatureDrift {
    /// `images`: `[N, C, S, S]` in [-1, 1] on the CPU. Never blocks.
    pub fn offer(&self, images: &Tensor) {
        match self.tx.try_send(images.shallow_clone()) {
            Ok(()) => {}
            Err(TrySendError::Full(t)) | Err(TrySendError::Disconnected(t)) => self.dropped.inc_by(t.size()[0].max(0) as u64),
        }
    }
}

/// Where the monitor reports.
pub struct Gauges {
    pub fd: Gauge,
    pub images: IntCounter,
    pub dropped: IntCounter,
}

/// Starts the monitor for a model trained with `cfg`: loads EfficientNet-Lite0 and the
/// validation images' features (from the feature cache when possible) on its thread.
pub fn spawn(cfg: &RunConfig, window: usize, every: usize, gauges: Gauges) -> FeatureDrift {
    let (tx, rx) = sync_channel::<Tensor>(QUEUE);
    let dropped = gauges.dropped.clone();
    let cfg = cfg.clone();
    let started = std::thread::Builder::new().name("difforge-feature-drift".into()).spawn(move || {
        if let Err(e) = monitor(&cfg, rx, window.max(2), every.max(1), &gauges) {
            tracing::error!("feature drift monitor stopped: {e}");
        }
    });
    if let Err(e) = started {
        tracing::error!("feature drift monitor not started: {e}");
    }
    FeatureDrift { tx, dropped }
}

fn monitor(cfg: &RunConfig, rx: Receiver<Tensor>, window: usize, every: usize, gauges: &Gauges) -> Result<(), String> {
    let net = FeatureNet::efficientnet(None, Device::Cpu).map_err(|e| e.to_string())?;
    let real = load_split(&cfg.data, cfg.seed, SplitChoice::Val).map_err(|e| e.to_string())?;
    let cache = FeatureCache::new(FeatureCache::default_dir());
    let (features, _) = cache.features(&net, &real.images, 50, |_| {}).map_err(|e| e.to_string())?;
    let reference = Gaussian::fit(&features).map_err(|e| e.to_string())?;
    let mut recent: VecDeque<Tensor> = VecDeque::new();
    let mut since_update = 0;
    for images in rx {
        let f = net.extract(&images, 50, |_| {}).map_err(|e| e.to_string())?;
        for row in 0..f.size()[0] {
            recent.push_back(f.get(row));
            if recent.len() > window {
                recent.pop_front();
            }
        }
        gauges.images.inc_by(f.size()[0].max(0) as u64);
        since_update += f.size()[0].max(0) as usize;
        if since_update >= every && recent.len() >= 2 {
            since_update = 0;
            let stacked = Tensor::stack(&recent.iter().collect::<Vec<_>>(), 0);
            let fd = Gaussian::fit(&stacked).and_then(|g| frechet_distance(&reference, &g)).map_err(|e| e.to_string())?;
            gauges.fd.set(fd);
        }
    }
    Ok(())
}
