//! Exponential moving average of the weights, with the usual warm-up of the decay so that early
//! averages are not dominated by the random initialisation.

use difforge_nn::FlatBuffer;

/// The decay used after `updates` optimiser steps.
pub fn ema_decay(max_decay: f64, updates: u64) -> f64 {
    max_decay.min((1.0 + updates as f64) / (10.0 + updates as f64))
}

/// ema <- decay * ema + (1 - decay) * param: one kernel over buffers of the same layout.
pub fn update(ema: &FlatBuffer, params: &FlatBuffer, decay: f64) {
    debug_assert!(ema.same_layout(params));
    tch::no_grad(|| {
        let _ = ema.data().shallow_clone().lerp_(params.data(), 1.0 - decay);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_warms_up_and_update_moves_toward_params() {
        assert!((ema_decay(0.999, 0) - 0.1).abs() < 1e-12);
        assert_eq!(ema_decay(0.999, 1_000_000), 0.999);
        let e = tch::Tensor::from_slice(&[0.0f32]);
        let ema = FlatBuffer::adopt(&[e.shallow_clone()]).unwrap();
        let params = FlatBuffer::adopt(&[tch::Tensor::from_slice(&[1.0f32])]).unwrap();
        update(&ema, &params, 0.75);
        assert!((e.double_value(&[0]) - 0.25).abs() < 1e-7);
    }
}
