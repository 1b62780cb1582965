//! Exponential moving average of the weights, with the usual warm-up of the decay so that early
//! averages are not dominated by the random initialisation.

use tch::Tensor;

/// The decay used after `updates` optimiser steps.
pub fn ema_decay(max_decay: f64, updates: u64) -> f64 {
    max_decay.min((1.0 + updates as f64) / (10.0 + updates as f64))
}

/// ema <- decay * ema + (1 - decay) * param, for matching lists of tensors.
pub fn update(ema: &[Tensor], params: &[Tensor], decay: f64) {
    tch::no_grad(|| {
        for (e, p) in ema.iter().zip(params) {
            let mut e = e.shallow_clone();
            let _ = e.lerp_(p, 1.0 - decay);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_warms_up_and_update_moves_toward_params() {
        assert!((ema_decay(0.999, 0) - 0.1).abs() < 1e-12);
        assert_eq!(ema_decay(0.999, 1_000_000), 0.999);
        let e = Tensor::from_slice(&[0.0f32]);
        update(&[e.shallow_clone()], &[Tensor::from_slice(&[1.0f32])], 0.75);
        assert!((e.double_value(&[0]) - 0.25).abs() < 1e-7);
    }
}
