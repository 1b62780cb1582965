//! The sampling loop: start from noise, evaluate the model (with guidance) at each of the
//! sampler's timesteps, convert its output to (x0, eps), let the sampler step.

use crate::config::SamplerConfig;
use crate::guidance::combine;
use crate::noise::NoiseSource;
use crate::prediction::Prediction;
use crate::sampler;
use crate::schedule::NoiseSchedule;
use difforge_nn::Conditioning;
use tch::{Kind, Tensor};

/// Anything that predicts the model target from (x_t, t, conditioning).
pub trait Denoiser {
    fn predict(&self, x: &Tensor, t: &Tensor, cond: &Conditioning) -> Tensor;
}

pub struct SampleRequest<'a> {
    pub schedule: &'a NoiseSchedule,
    pub prediction: Prediction,
    pub sampler: &'a SamplerConfig,
    /// What each image is conditioned on.
    pub cond: Conditioning,
    /// Its null counterpart for classifier-free guidance (None: the model has none, and the
    /// guidance scale is not used).
    pub null: Option<Conditioning>,
    pub noise: &'a NoiseSource,
}

/// What an observer sees after each step (for trajectories and explanations).
pub struct TrajectoryStep<'a> {
    pub index: usize,
    pub t: usize,
    pub x_t: &'a Tensor,
    pub x0: &'a Tensor,
    pub x_next: &'a Tensor,
}

/// The guided prediction: conditional and null predictions in one doubled batch, combined;
/// or the conditional prediction alone when there is no null counterpart or the scale is 1.
fn guided(model: &dyn Denoiser, x: &Tensor, t: &Tensor, req: &SampleRequest) -> Tensor {
    let g = req.sampler.guidance;
    match &req.null {
        Some(null) if (g - 1.0).abs() > 1e-12 => {
            let out = model.predict(&Tensor::cat(&[x, x], 0), &Tensor::cat(&[t, t], 0), &Conditioning::cat(&[&req.cond, null]));
            let parts = out.chunk(2, 0);
            combine(&parts[0], &parts[1], g)
        }
        _ => model.predict(x, t, &req.cond),
    }
}

/// Generates one image per noise seed; images in [-1, 1] (not clamped).
pub fn sample(model: &dyn Denoiser, req: &SampleRequest, mut observer: Option<&mut dyn FnMut(TrajectoryStep)>) -> Tensor {
    tch::no_grad(|| {
        let mut s = sampler::build(req.sampler, req.schedule);
        let mut x = req.noise.draw(0);
        let device = x.device();
        let n = req.noise.batch_size() as i64;
        let ts = s.timesteps().to_vec();
        for (i, &t) in ts.iter().enumerate() {
            let (a, sg) = req.schedule.coefficients_at(t, device);
            let tt = Tensor::full([n], t as i64, (Kind::Int64, device));
            let out = guided(model, &x, &tt, req).to_kind(Kind::Float);
            let (mut x0, mut eps) = req.prediction.split(&out, &x, &a, &sg);
            if req.sampler.clip_x0 {
                x0 = x0.clamp(-1.0, 1.0);
                eps = (&x - &x0 * &a) / &sg;
            }
            let mut draw = || req.noise.draw(i as u64 + 1);
            let next = s.step(i, &x, &x0, &eps, &mut draw);
            if let Some(obs) = observer.as_mut() {
                obs(TrajectoryStep { index: i, t, x_t: &x, x0: &x0, x_next: &next });
            }
            x = next;
        }
        x
    })
}
