//! Output monitoring: a rolling summary of what the server generated (mean and standard
//! deviation of pixel values, class mix) and its drift from the training data's statistics, so
//! an operator sees when outputs change (a bad reload, a broken device, a changed sampler).

use std::collections::VecDeque;

/// Pixel statistics of the training data, on the [-1, 1] scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reference {
    pub mean: f64,
    pub std: f64,
}

impl Reference {
    /// Computed from the model's own dataset when it can be loaded here (the embedded digits
    /// always can); None otherwise, and drift is then not reported.
    pub fn from_data(cfg: &difforge_data::DataConfig) -> Option<Reference> {
        let set = difforge_data::source::load(cfg).ok()?;
        let (mut sum, mut sq, mut n) = (0f64, 0f64, 0f64);
        for px in &set.pixels {
            for &v in &px.data {
                let x = f64::from(v) / 127.5 - 1.0;
                sum += x;
                sq += x * x;
                n += 1.0;
            }
        }
        (n > 0.0).then(|| {
            let mean = sum / n;
            Reference { mean, std: (sq / n - mean * mean).max(1e-12).sqrt() }
        })
    }
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
