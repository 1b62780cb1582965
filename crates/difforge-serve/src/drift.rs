//! Output monitoring: a rolling summary of what the server generated (mean and standard
//! deviation of pixel values, class mix) and its drift from the training data's statistics, so
//! an operator sees when outputs change (a bad reload, a broken device, a changed sampler).

use std::collections::VecDeque;

/// Pixel statistics of the training data, on the [-1, 1] scale.
pub type Reference = difforge_model::checkpoint::PixelStats;

/// The reference of a checkpoint: the statistics its training run recorded, or for checkpoints
/// written before those were kept, computed from its dataset once per process (reloads of the
/// same data reuse it; the data is not read again).
pub fn reference(state: &difforge_model::checkpoint::TrainState, data: &difforge_data::DataConfig, seed: u64) -> Option<Reference> {
    if let Some(stats) = state.data_pixels {
        return Some(stats);
    }
    static COMPUTED: std::sync::Mutex<Vec<(String, Option<Reference>)>> = std::sync::Mutex::new(Vec::new());
    let key = format!("{data:?} {seed}");
    let mut computed = COMPUTED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, r)) = computed.iter().find(|(k, _)| *k == key) {
        return *r;
    }
    tracing::info!("this checkpoint does not record its data's pixel statistics: computing them once from its dataset");
    let r = difforge_data::source::load(data).ok().and_then(|set| {
        let split = difforge_data::Split::new(&set.ids, data.val_fraction, seed);
        Reference::of(&set, &split.train)
    });
    computed.push((key, r));
    r
}

/// Per-image means over the last `window` generated images.
#[derive(Debug)]
pub struct Rolling {
    window: usize,
    means: VecDeque<f64>,
}

impl Rolling {
    pub fn new(window: usize) -> Rolling {
        Rolling { window, means: VecDeque::new() }
    }

    pub fn push(&mut self, image_mean: f64) {
        self.means.push_back(image_mean);
        while self.means.len() > self.window {
            self.means.pop_front();
        }
    }

    pub fn mean(&self) -> Option<f64> {
        (!self.means.is_empty()).then(|| self.means.iter().sum::<f64>() / self.means.len() as f64)
    }

    /// |rolling mean - reference mean| in units of the reference's standard deviation.
    pub fn drift(&self, reference: &Reference) -> Option<f64> {
        self.mean().map(|m| (m - reference.mean).abs() / reference.std)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_window_and_drift() {
        let mut r = Rolling::new(2);
        assert_eq!(r.mean(), None);
        r.push(1.0);
        r.push(0.0);
        r.push(0.5);
        assert_eq!(r.mean(), Some(0.25));
        assert_eq!(r.drift(&Reference { mean: -0.25, std: 0.5 }), Some(1.0));
    }
}
