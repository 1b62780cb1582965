//! The denoising path: x_t and the model's predicted clean image x0 at every step, as a strip
//! (two rows per sample: x_t above, x0 below, at the kept steps) and as an animated GIF.

use crate::heatmap::{pictures, tile};
use crate::Subject;
use difforge_diffusion::sample;
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
    pub class: Option<i64>,
    pub timesteps: Vec<usize>,
    pub shown_steps: Vec<usize>,
    /// Mean |x0(step) - output| per step: how early the final image is decided.
    pub x0_distance_to_output: Vec<f64>,
}

pub fn trajectory(s: &Subject) -> Trajectory {
    let noise = s.noise();
    let req = s.request(&noise, s.sampler);
    let denoiser = s.model.denoiser(true);
    let mut t = Trajectory { steps: Vec::new(), x_t: Vec::new(), x0: Vec::new(), output: Tensor::new() };
    let mut observe = |step: difforge_diffusion::TrajectoryStep| {
        t.steps.push((step.index, step.t));
        t.x_t.push(step.x_t.to_device(Device::Cpu));
        t.x0.push(step.x0.to_device(Device::Cpu));
    };
    let out = sample(&denoiser, &req, Some(&mut observe));
    t.output = out.to_device(Device::Cpu);
    t
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
            class: s.class,
            timesteps: self.steps.iter().map(|(_, t)| *t).collect(),
            shown_steps: shown.to_vec(),
            x0_distance_to_output: self.x0.iter().map(|x0| (x0 - &self.output).abs().mean(tch::Kind::Float).double_value(&[])).collect(),
        }
    }

    /// Two rows per sample (x_t, then x0) at the shown steps, then the output.
    pub fn strip(&self, shown: &[usize]) -> image::DynamicImage {
        let n = self.output.size()[0];
        let mut rows = Vec::new();
        let outputs = pictures(&self.output);
        for i in 0..n {
            let mut xt_row: Vec<_> = shown.iter().map(|&k| pictures(&self.x_t[k].narrow(0, i, 1)).remove(0)).collect();
            let mut x0_row: Vec<_> = shown.iter().map(|&k| pictures(&self.x0[k].narrow(0, i, 1)).remove(0)).collect();
            xt_row.push(outputs[i as usize].clone());
            x0_row.push(outputs[i as usize].clone());
            rows.push(xt_row);
            rows.push(x0_row);
        }
        tile(&rows, 4)
    }

    /// An animated GIF of x_t (top) and x0 (bottom) for every sample, one frame per step.
    pub fn gif(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        {
            let mut enc = GifEncoder::new_with_speed(&mut bytes, 10);
            let _ = enc.set_repeat(Repeat::Infinite);
            for k in 0..self.x_t.len() {
                let frame = tile(&[pictures(&self.x_t[k]), pictures(&self.x0[k])], 4).to_rgba8();
                let _ = enc.encode_frame(Frame::from_parts(frame, 0, 0, Delay::from_numer_denom_ms(150, 1)));
            }
            let last = tile(&[pictures(&self.output), pictures(&self.output)], 4).to_rgba8();
            let _ = enc.encode_frame(Frame::from_parts(last, 0, 0, Delay::from_numer_denom_ms(1200, 1)));
        }
        bytes
    }
}
