//! Classifier-free guidance (Ho & Salimans 2022): run the model with the conditioning and with
//! its null counterpart in one doubled batch, then move the prediction away from the
//! unconditional one; optionally rescale the result toward the conditional prediction's standard
//! deviation (Lin et al. 2024), which keeps high scales from over-saturating.

use tch::{Kind, Tensor};

/// uncond + scale * (cond - uncond); scale 1 is the conditional prediction.
pub fn combine(cond: &Tensor, uncond: &Tensor, scale: f64) -> Tensor {
    uncond + (cond - uncond) * scale
}

/// `phi` of the way from `guided` to `guided` rescaled to `cond`'s per-sample standard
/// deviation (diffusers' `rescale_noise_cfg`).
pub fn rescale(guided: &Tensor, cond: &Tensor, phi: f64) -> Tensor {
    let dims: Vec<i64> = (1..guided.dim() as i64).collect();
    let std = |t: &Tensor| t.std_dim(dims.as_slice(), true, true).to_kind(Kind::Float);
    let rescaled = guided * (std(cond) / std(guided).clamp_min(1e-12));
    &rescaled * phi + guided * (1.0 - phi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_one_is_conditional_and_zero_unconditional() {
        let c = Tensor::from_slice(&[1.0f64, 2.0]);
        let u = Tensor::from_slice(&[0.0f64, 1.0]);
        assert!(combine(&c, &u, 1.0).equal(&c));
        assert!(combine(&c, &u, 0.0).equal(&u));
        assert!(combine(&c, &u, 3.0).equal(&Tensor::from_slice(&[3.0f64, 4.0])));
    }

    #[test]
    fn full_rescale_matches_the_conditional_spread() {
        let cond = Tensor::from_slice(&[1.0f32, -1.0, 1.0, -1.0]).view([1, 1, 2, 2]);
        let guided = &cond * 3.0;
        let out = rescale(&guided, &cond, 1.0);
        assert!((out - &cond).abs().max().double_value(&[]) < 1e-6);
        assert!(rescale(&guided, &cond, 0.0).equal(&guided));
    }
}
