//! Classifier-free guidance (Ho & Salimans 2022): run the model with the class and with the null
//! class in one doubled batch, then move the prediction away from the unconditional one.

use tch::Tensor;

/// uncond + scale * (cond - uncond); scale 1 is the conditional prediction.
pub fn combine(cond: &Tensor, uncond: &Tensor, scale: f64) -> Tensor {
    uncond + (cond - uncond) * scale
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
}
