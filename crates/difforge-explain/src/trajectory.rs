//! The denoising path: x_t and the model's predicted clean image x0 at every step, as a strip
//! (two rows per sample: x_t above, x0 below, at the kept steps) and as an animated GIF.

use crate::heatmap::{pictures, tile};
use crate::Subject;
use difforge_diffusion::sample;
use difforge_model::{ModelError, Weights};
use image::codecs::gif::{GifEncoder, Repeat};
use image::{Delay, Frame};
use serde::Serialize;
use tch::{Device, Tensor};

pub struct Trajectory {
    /// (step index, training timestep) of every step.
    pub steps: Vec<(usize, usize)>,
    /// x_t before each step, (N, C, S, S) on the CPU.
    pub x_t: Vec<Tensor>,
    /// The model's x0 estimate at each step.
    pub x0: Vec<Tensor>,
    /// The sampler's output.
    pub output: Tensor,
}

#[derive(Serialize)]
pub struct TrajectorySummary {
    pub seeds: Vec<u64>,
    pub condition: String,
    pub timesteps: Vec<usize>,
    pub shown_steps: Vec<usize>,
    /// Mean |x0(step) - output| per step: how early the final image is decided.
    pub x0_distance_to_output: Vec<f64>,
}

pub fn trajectory(s: &Subject) -> Result<Trajectory, ModelError> {
    let noise = s.noise();
    let req = s.request(&noise, s.sampler, None)?;
    let denoiser = s.model.denoiser(Weights::Ema);
    let mut t = Trajectory { steps: Vec::new(), x_t: Vec::new(), x0: Vec::new(), output: Tensor::new() };
    let mut observe = |step: difforge_diffusion::TrajectoryStep| {
        t.steps.push((step.index, step.t));
        t.x_t.push(step.x_t.to_device(Device::Cpu));
        t.x0.push(step.x0.to_device(Device::Cpu));
    };
    let out = sample(&denoiser, &req, Some(&mut observe));
    t.output = out.to_device(Device::Cpu);
    Ok(t)
}

/// Indices of `count` steps spread over the trajectory, always with the first and last.
pub fn spread(len: usize, count: usize) -> Vec<usize> {
    if len <= count || count < 2 {
        return (0..len).collect();
    }
    (0..count).map(|k| (k * (len - 1) + (count - 1) / 2) / (count - 1)).collect()
}

impl Trajectory {
    pub fn summary(&self, s: &Subject, shown: &[usize]) -> TrajectorySummary {
        TrajectorySummary {
            seeds: s.seeds.clone(),
            condition: format!("{:?}", s.condition),
            timesteps: self.steps.iter().map(|(_, t)| *t).collect(),
            shown_steps: shown.to_vec(),
            x0_distance_to_output: self.x0.iter().map(|x0| (x0 - &self.output).abs().mean(tch::Kind::Float).double_value(&[])).collect(),
        }
    }

    /// Two rows per sample (x_t, then x0) at the shown steps, then the output.
    pub fn strip(&self, shown: &[usize]) -> Result<image::DynamicImage, tch::TchError> {
        let outputs = pictures(&self.output)?;
        let xt: Vec<Vec<image::DynamicImage>> = shown.iter().map(|&k| pictures(&self.x_t[k])).collect::<Result<_, _>>()?;
        let x0: Vec<Vec<image::DynamicImage>> = shown.iter().map(|&k| pictures(&self.x0[k])).collect::<Result<_, _>>()?;
        let mut rows = Vec::new();
        for (i, out) in outputs.iter().enumerate() {
            let row = |per_step: &[Vec<image::DynamicImage>]| per_step.iter().map(|p| p[i].clone()).chain(std::iter::once(out.clone())).collect::<Vec<_>>();
            rows.push(row(&xt));
            rows.push(row(&x0));
        }
        Ok(tile(&rows, 4))
    }

    /// An animated GIF of x_t (top) and x0 (bottom) for every sample, one frame per step.
    pub fn gif(&self) -> Result<Vec<u8>, String> {
        let mut bytes = Vec::new();
        {
            let mut enc = GifEncoder::new_with_speed(&mut bytes, 10);
            enc.set_repeat(Repeat::Infinite).map_err(|e| e.to_string())?;
            let frame = |a: &tch::Tensor, b: &tch::Tensor| -> Result<image::RgbaImage, String> {
                Ok(tile(&[pictures(a).map_err(|e| e.to_string())?, pictures(b).map_err(|e| e.to_string())?], 4).to_rgba8())
            };
            for k in 0..self.x_t.len() {
                enc.encode_frame(Frame::from_parts(frame(&self.x_t[k], &self.x0[k])?, 0, 0, Delay::from_numer_denom_ms(150, 1))).map_err(|e| e.to_string())?;
            }
            enc.encode_frame(Frame::from_parts(frame(&self.output, &self.output)?, 0, 0, Delay::from_numer_denom_ms(1200, 1))).map_err(|e| e.to_string())?;
        }
        Ok(bytes)
    }
}
