//! The sampling loop: start from noise, evaluate the model (with guidance) at each of the
//! sampler's timesteps, convert its output to (x0, eps), let the sampler step.

use crate::config::SamplerConfig;
use crate::guidance::{combine, rescale};
use crate::noise::NoiseSource;
use crate::prediction::Prediction;
use crate::sampler;
use crate::schedule::NoiseSchedule;
use difforge_nn::Conditioning;
use tch::{Kind, Tensor};

/// Anything that predicts the model target from (x_t, t, conditioning).
pub trait Denoiser {
    fn predict(&self, x: &Tensor, t: &Tensor, cond: &Conditioning) -> Tensor;

    /// The same conditioning with the work every step would repeat on it done once (a network
    /// with its own text encoder encodes the token ids here); None: use `cond` as it is.
    fn prepare(&self, _cond: &Conditioning) -> Option<Conditioning> {
        None
    }
}

/// A sampling run's conditioning, prepared once: for the conditional prediction alone, and
/// (with a null counterpart) conditional and null in one doubled batch.
struct Prepared {
    cond: Conditioning,
    both: Option<Conditioning>,
}

impl Prepared {
    fn new(model: &dyn Denoiser, req: &SampleRequest) -> Prepared {
        let cond = model.prepare(&req.cond).unwrap_or_else(|| req.cond.shallow_clone());
        // Prepared as the doubled batch the network sees, so each step computes what it did
        // before preparation existed, to the bit.
        let both = req.null.as_ref().map(|null| {
            let both = Conditioning::cat(&[&req.cond, null]);
            model.prepare(&both).unwrap_or(both)
        });
        Prepared { cond, both }
    }
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

/// The guided prediction at noise level `sigma`: conditional and null predictions in one doubled
/// batch, combined (and rescaled when asked); or the conditional prediction alone when there is
/// no null counterpart, the scale is 1, or `sigma` is outside the guidance interval.
fn guided(model: &dyn Denoiser, x: &Tensor, t: &Tensor, sigma: f64, req: &SampleRequest, prepared: &Prepared) -> Tensor {
    let s = req.sampler;
    match &prepared.both {
        Some(both) if (s.guidance - 1.0).abs() > 1e-12 && s.guides_at(sigma) => {
            let out = model.predict(&Tensor::cat(&[x, x], 0), &Tensor::cat(&[t, t], 0), both);
            let parts = out.chunk(2, 0);
            let g = combine(&parts[0], &parts[1], s.guidance);
            if s.guidance_rescale > 0.0 {
                rescale(&g, &parts[0], s.guidance_rescale)
            } else {
                g
            }
        }
        _ => model.predict(x, t, &prepared.cond),
    }
}

/// Generates one image per noise seed; images in [-1, 1] (not clamped).
pub fn sample(model: &dyn Denoiser, req: &SampleRequest, observer: Option<&mut dyn FnMut(TrajectoryStep)>) -> Tensor {
    denoise(model, req, observer, &|| false).expect("sampling without a stop condition runs every step")
}

/// [`sample`], given up before any step at which `stop` says so (a server's request that timed
/// out or whose client left): None then. One step is the unit of work that cannot be cut.
pub fn sample_until(model: &dyn Denoiser, req: &SampleRequest, stop: &dyn Fn() -> bool) -> Option<Tensor> {
    denoise(model, req, None, stop)
}

fn denoise(model: &dyn Denoiser, req: &SampleRequest, mut observer: Option<&mut dyn FnMut(TrajectoryStep)>, stop: &dyn Fn() -> bool) -> Option<Tensor> {
    tch::no_grad(|| {
        let mut s = sampler::build(req.sampler, req.schedule);
        let start = s.start_scale();
        let mut x = if start == 1.0 { req.noise.draw(0) } else { req.noise.draw(0) * start };
        let device = x.device();
        let n = req.noise.batch_size() as i64;
        let ts = s.timesteps().to_vec();
        let prepared = Prepared::new(model, req);
        let (a_all, sg_all) = sampler::output_coefficient_table(s.as_ref(), req.schedule, device);
        for (i, &t) in ts.iter().enumerate() {
            if stop() {
                return None;
            }
            let (a, sg) = (a_all.get(i as i64), sg_all.get(i as i64));
            let tt = Tensor::full([n], t as i64, (Kind::Int64, device));
            let out = guided(model, &x, &tt, req.schedule.sigma(t), req, &prepared).to_kind(Kind::Float);
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
        Some(x)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::ScheduleKind;
    use std::cell::RefCell;
    use tch::Device;

    /// Predicts a fixed function of x, t and the class, and records each call's batch size.
    struct Recorder(RefCell<Vec<i64>>);

    impl Denoiser for Recorder {
        fn predict(&self, x: &Tensor, t: &Tensor, cond: &Conditioning) -> Tensor {
            self.0.borrow_mut().push(x.size()[0]);
            let class = cond.class().map_or_else(|| x.zeros_like(), |c| c.to_kind(Kind::Float).view([-1, 1, 1, 1]) * 0.1);
            x * 0.5 + t.to_kind(Kind::Float).view([-1, 1, 1, 1]) * 1e-4 + class
        }
    }

    fn run(sampler: SamplerConfig) -> (Tensor, Vec<i64>) {
        let (out, calls) = run_until(sampler, &|| false);
        (out.expect("not stopped"), calls)
    }

    fn run_until(sampler: SamplerConfig, stop: &dyn Fn() -> bool) -> (Option<Tensor>, Vec<i64>) {
        let schedule = NoiseSchedule::new(ScheduleKind::Cosine, 1000, 1e-4, 0.02);
        let noise = NoiseSource::new(vec![1, 2], [1, 4, 4], Device::Cpu);
        let req = SampleRequest {
            schedule: &schedule,
            prediction: Prediction::Epsilon,
            sampler: &sampler,
            cond: Conditioning::Class(Tensor::from_slice(&[1i64, 2])),
            null: Some(Conditioning::Class(Tensor::from_slice(&[9i64, 9]))),
            noise: &noise,
        };
        let d = Recorder(RefCell::new(Vec::new()));
        let out = sample_until(&d, &req, stop);
        (out, d.0.into_inner())
    }

    /// The sampling loop and every sampler's step run once per denoising step, on the device:
    /// a tensor made on the host there is a synchronous copy per step (and breaks CUDA graph
    /// capture). What is made once per run (the coefficient table, in sampler/mod.rs) is not
    /// checked here; the per-image noise is drawn on the host by design (portable seeds).
    #[test]
    fn the_sampling_loop_and_sampler_steps_make_no_host_tensors() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![src.join("sample.rs")];
        for entry in std::fs::read_dir(src.join("sampler")).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().is_some_and(|n| n != "mod.rs") {
                files.push(path);
            }
        }
        let host_bound = ["Device::Cpu", "Tensor::from_slice", "Tensor::from(", ".to_device(", "_value(&", "try_from("];
        let mut found = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for (i, line) in code.lines().enumerate() {
                let code_part = line.split("//").next().unwrap_or_default();
                if let Some(p) = host_bound.iter().find(|p| code_part.contains(**p)) {
                    found.push(format!("{}:{}: {p}: {}", file.display(), i + 1, line.trim()));
                }
            }
        }
        assert!(files.len() > 5, "{files:?}");
        assert!(found.is_empty(), "host tensors in per-step code:\n{}", found.join("\n"));
    }

    #[test]
    fn a_stop_is_obeyed_before_the_next_step() {
        let asked = std::cell::Cell::new(0);
        let stop = || {
            asked.set(asked.get() + 1);
            asked.get() > 3
        };
        let (out, calls) = run_until(SamplerConfig { steps: 10, guidance: 3.0, ..Default::default() }, &stop);
        assert!(out.is_none());
        assert_eq!(calls.len(), 3, "three steps ran, then the fourth was not started");
    }

    #[test]
    fn guidance_runs_only_inside_its_interval() {
        let base = SamplerConfig { steps: 10, guidance: 3.0, ..Default::default() };
        let (_, always) = run(base.clone());
        assert_eq!(always, vec![4; 10], "every step guided: doubled batches");
        // An interval no step falls in: the conditional prediction alone, as with guidance 1.
        let (never, calls) = run(SamplerConfig { guidance_interval: Some([1e6, 2e6]), ..base.clone() });
        assert_eq!(calls, vec![2; 10]);
        let (unguided, _) = run(SamplerConfig { guidance: 1.0, ..base.clone() });
        assert!(never.equal(&unguided));
        // The middle noise levels only.
        let schedule = NoiseSchedule::new(ScheduleKind::Cosine, 1000, 1e-4, 0.02);
        let ts = crate::sampler::sampling_timesteps(1000, 10, base.spacing, 0);
        let inside = ts.iter().map(|&t| schedule.sigma(t)).filter(|&s| 0.5 < s && s <= 3.1).count();
        let (_, calls) = run(SamplerConfig { guidance_interval: Some([0.5, 3.1]), ..base });
        assert_eq!(calls.iter().filter(|&&b| b == 4).count(), inside);
        assert!(inside > 0 && inside < 10);
    }
}
