//! How much the conditioning (a class) drives each pixel of a sample.
//! - Guidance difference: at every step of the guided trajectory, |x0(cond) - x0(null)|, the
//!   part of the model's clean-image estimate that the conditioning changes, averaged over steps.
//! - Integrated gradients of the final image with respect to the conditioning embedding, from the
//!   null conditioning as baseline, summed over embedding dimensions. By IG's completeness this
//!   sum is exactly F(cond) - F(null), where F is the unguided sampler's output from the same
//!   noise, so it is computed as that difference rather than by a Riemann sum of gradients.
//!
//! A model without null conditioning (an unconditional one) has nothing to attribute: both maps
//! are zero.

use crate::Subject;
use difforge_diffusion::{sample, Denoiser, SamplerConfig};
use difforge_model::{Condition, ModelError, Weights};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

pub struct Attribution {
    /// (N, H, W): mean over steps and channels of |x0(cond) - x0(null)|.
    pub guidance_difference: Tensor,
    /// (N, H, W): |F(cond) - F(null)| averaged over channels.
    pub integrated_gradients: Tensor,
    pub output: Tensor,
}

#[derive(Serialize)]
pub struct AttributionSummary {
    pub condition: String,
    pub mean_guidance_difference: f64,
    pub mean_integrated_gradients: f64,
}

pub fn attribution(s: &Subject) -> Result<Attribution, ModelError> {
    let m = s.model;
    let noise = s.noise();
    let denoiser = m.denoiser(Weights::Ema);
    let req = s.request(&noise, s.sampler, None)?;
    let [_, side, _] = s.shape();
    let n = s.seeds.len() as i64;
    let zeros = || Tensor::zeros([n, side, side], (Kind::Float, Device::Cpu));
    let Some(null) = &req.null else {
        let output = sample(&denoiser, &req, None).to_device(Device::Cpu);
        return Ok(Attribution { guidance_difference: zeros(), integrated_gradients: zeros(), output });
    };
    let mut diff_sum: Option<Tensor> = None;
    let mut steps = 0.0f64;
    let prediction = m.config().diffusion.prediction;
    let mut observe = |step: difforge_diffusion::TrajectoryStep| {
        let t = Tensor::full([n], step.t as i64, (Kind::Int64, m.device()));
        let (a, sg) = m.schedule().coefficients_at(step.t, m.device());
        let x0 = |cond| prediction.split(&denoiser.predict(step.x_t, &t, cond), step.x_t, &a, &sg).0;
        let d = tch::no_grad(|| (x0(&req.cond) - x0(null)).abs().mean_dim([1i64].as_slice(), false, Kind::Float));
        diff_sum = Some(match diff_sum.take() {
            Some(acc) => acc + d,
            None => d,
        });
        steps += 1.0;
    };
    let output = sample(&denoiser, &req, Some(&mut observe)).to_device(Device::Cpu);
    let guidance_difference = diff_sum.map_or_else(zeros, |d| (d / steps.max(1.0)).to_device(Device::Cpu));

    // F(cond) - F(null) without guidance, from the same noise.
    let unguided = SamplerConfig { guidance: 1.0, ..s.sampler.clone() };
    let with_cond = sample(&denoiser, &s.request(&noise, &unguided, None)?, None);
    let without = sample(&denoiser, &s.request(&noise, &unguided, Some(&Condition::Unconditional))?, None);
    let integrated_gradients = (with_cond - without).abs().mean_dim([1i64].as_slice(), false, Kind::Float).to_device(Device::Cpu);
    Ok(Attribution { guidance_difference, integrated_gradients, output })
}

impl Attribution {
    pub fn summary(&self, condition: &Condition) -> AttributionSummary {
        AttributionSummary {
            condition: format!("{condition:?}"),
            mean_guidance_difference: self.guidance_difference.mean(Kind::Float).double_value(&[]),
            mean_integrated_gradients: self.integrated_gradients.mean(Kind::Float).double_value(&[]),
        }
    }
}
