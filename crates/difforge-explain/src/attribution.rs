//! How much the class label drives each pixel of a sample.
//! - Guidance difference: at every step of the guided trajectory, |x0(class) - x0(null)|, the
//!   part of the model's clean-image estimate that the class changes, averaged over steps.
//! - Integrated gradients of the final image with respect to the class embedding, from the null
//!   class's embedding as baseline, summed over embedding dimensions. By IG's completeness this
//!   sum is exactly F(class) - F(null), where F is the unguided sampler's output from the same
//!   noise, so it is computed as that difference rather than by a Riemann sum of gradients.

use crate::Subject;
use difforge_diffusion::{sample, Denoiser, SamplerConfig};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

pub struct Attribution {
    /// (N, S, S): mean over steps and channels of |x0(class) - x0(null)|.
    pub guidance_difference: Tensor,
    /// (N, S, S): |F(class) - F(null)| averaged over channels.
    pub integrated_gradients: Tensor,
    pub output: Tensor,
}

#[derive(Serialize)]
pub struct AttributionSummary {
    pub class: Option<i64>,
    pub mean_guidance_difference: f64,
    pub mean_integrated_gradients: f64,
}

pub fn attribution(s: &Subject) -> Attribution {
    let m = s.model;
    let noise = s.noise();
    let denoiser = m.denoiser(true);
    let classes = s.classes();
    let null = m.config.model.null_class();
    let mut diff_sum: Option<Tensor> = None;
    let mut steps = 0.0f64;
    let req = s.request(&noise, s.sampler);
    let mut observe = |step: difforge_diffusion::TrajectoryStep| {
        let (Some(c), true) = (&classes, m.config.model.num_classes > 0) else { return };
        let t = Tensor::full([c.size()[0]], step.t as i64, (Kind::Int64, m.device));
        let ab = m.schedule.alpha_bar(Some(step.t));
        let (a, sg) = (Tensor::from(ab.sqrt()).to_device(m.device), Tensor::from((1.0 - ab).sqrt()).to_device(m.device));
        let x0 = |cls: &Tensor| {
            let out = denoiser.predict(step.x_t, &t, Some(cls));
            m.config.diffusion.prediction.split(&out, step.x_t, &a, &sg).0
        };
        let d = tch::no_grad(|| (x0(c) - x0(&c.full_like(null))).abs().mean_dim([1i64].as_slice(), false, Kind::Float));
        diff_sum = Some(match diff_sum.take() {
            Some(acc) => acc + d,
            None => d,
        });
        steps += 1.0;
    };
    let output = sample(&denoiser, &req, Some(&mut observe)).to_device(Device::Cpu);
    let [_, side, _] = s.shape();
    let n = s.seeds.len() as i64;
    let guidance_difference =
        diff_sum.map_or_else(|| Tensor::zeros([n, side, side], (Kind::Float, Device::Cpu)), |d| (d / steps.max(1.0)).to_device(Device::Cpu));

    // F(class) - F(null) without guidance, from the same noise.
    let unguided = SamplerConfig { guidance: 1.0, ..s.sampler.clone() };
    let with_class = sample(&denoiser, &s.request(&noise, &unguided), None);
    let null_subject = Subject { model: m, sampler: &unguided, class: None, seeds: s.seeds.clone() };
    let without = sample(&denoiser, &null_subject.request(&noise, &unguided), None);
    let integrated_gradients = (with_class - without).abs().mean_dim([1i64].as_slice(), false, Kind::Float).to_device(Device::Cpu);
    Attribution { guidance_difference, integrated_gradients, output }
}

impl Attribution {
    pub fn summary(&self, class: Option<i64>) -> AttributionSummary {
        AttributionSummary {
            class,
            mean_guidance_difference: self.guidance_difference.mean(Kind::Float).double_value(&[]),
            mean_integrated_gradients: self.integrated_gradients.mean(Kind::Float).double_value(&[]),
        }
    }
}
