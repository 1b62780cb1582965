//! Samplers: each walks the reverse process over a chosen subset of the training timesteps.
//! They all take the network's output converted to (x0, eps), so one sampler works with every
//! prediction target, and guidance happens before them.
//!
//! [`REGISTRY`] is the one list of samplers: the config, the command line, the server's
//! validation, its web page and the conformance test below all read it. Adding a sampler is one
//! file (with its `INFO`) plus one line in the list.

mod ddim;
mod ddpm;
mod dpmpp_2m;
mod euler;
mod euler_ancestral;
mod pndm;

pub use ddim::Ddim;
pub use ddpm::Ddpm;
pub use dpmpp_2m::DpmPlusPlus2M;
pub use euler::Euler;
pub use euler_ancestral::EulerAncestral;
pub use pndm::Pndm;

use crate::config::{SamplerConfig, Spacing};
use crate::schedule::NoiseSchedule;
use tch::Tensor;

/// A sampler's entry in the registry.
pub struct SamplerInfo {
    /// The name in configs, flags and requests.
    pub name: &'static str,
    /// Other accepted spellings.
    pub aliases: &'static [&'static str],
    /// One line for help texts and the web page.
    pub about: &'static str,
    /// Whether it adds fresh noise at its steps (its results then depend on the noise draws).
    pub stochastic: bool,
    /// Builds the sampler for the given descending timesteps.
    pub build: fn(&SamplerConfig, &NoiseSchedule, Vec<usize>) -> Box<dyn Sampler>,
}

/// Every sampler difforge has, in the order they are listed to users.
pub static REGISTRY: &[SamplerInfo] = &[ddim::INFO, ddpm::INFO, dpmpp_2m::INFO, dpmpp_2m::INFO_KARRAS, euler::INFO, euler_ancestral::INFO, pndm::INFO];

/// A sampler chosen by name (an entry of [`REGISTRY`]).
#[derive(Clone, Copy)]
pub struct SamplerKind(&'static SamplerInfo);

impl SamplerKind {
    /// The sampler with this name or alias.
    pub fn parse(s: &str) -> Option<SamplerKind> {
        REGISTRY.iter().find(|i| i.name == s || i.aliases.contains(&s)).map(SamplerKind)
    }

    /// Every sampler.
    pub fn all() -> impl Iterator<Item = SamplerKind> {
        REGISTRY.iter().map(SamplerKind)
    }

    /// The names, in registry order.
    pub fn names() -> Vec<&'static str> {
        REGISTRY.iter().map(|i| i.name).collect()
    }

    /// `"ddim", "ddpm", ... or "pndm"`, for error messages.
    pub fn expected() -> String {
        difforge_core::one_of(&Self::names())
    }

    pub fn name(self) -> &'static str {
        self.0.name
    }

    pub fn info(self) -> &'static SamplerInfo {
        self.0
    }

    /// DDIM, the default.
    pub fn ddim() -> SamplerKind {
        SamplerKind(&REGISTRY[0])
    }
}

impl PartialEq for SamplerKind {
    fn eq(&self, other: &SamplerKind) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for SamplerKind {}

impl std::fmt::Debug for SamplerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.name)
    }
}

impl std::fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.name)
    }
}

impl std::str::FromStr for SamplerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<SamplerKind, String> {
        SamplerKind::parse(s).ok_or_else(|| format!("\"{s}\": expected {}", SamplerKind::expected()))
    }
}

impl serde::Serialize for SamplerKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.name)
    }
}

impl<'de> serde::Deserialize<'de> for SamplerKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SamplerKind, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

pub trait Sampler {
    /// Training timesteps at which the model is evaluated, noisiest first.
    fn timesteps(&self) -> &[usize];

    /// The starting x_t as a multiple of the unit Gaussian noise: 1 but where the sampler's
    /// reference starts elsewhere (diffusers' Euler schedulers with trailing spacing).
    fn start_scale(&self) -> f64 {
        1.0
    }

    /// Moves `x` from `timesteps()[i]` to the next timestep (or to t = 0 after the last), given
    /// the model's estimates of the clean image and of the noise. `noise` yields fresh Gaussian
    /// noise shaped like `x`, for samplers that add some.
    /// The alpha_bar the model's output at step `i` is read with (into x0 and eps): None for the
    /// schedule's own at `timesteps()[i]`; a sampler whose noise levels are its own (Karras
    /// sigmas, a floored zero-terminal-SNR start) says which.
    fn alpha_bar(&self, _i: usize) -> Option<f64> {
        None
    }

    fn step(&mut self, i: usize, x: &Tensor, x0: &Tensor, eps: &Tensor, noise: &mut dyn FnMut() -> Tensor) -> Tensor;
}

/// The coefficients (sqrt(alpha_bar), sqrt(1 - alpha_bar)) the model's output at step `i` of
/// `sampler` is read with, as 0-d float64 tensors.
pub fn output_coefficients(sampler: &dyn Sampler, schedule: &NoiseSchedule, i: usize, device: tch::Device) -> (Tensor, Tensor) {
    let ab = output_alpha_bar(sampler, schedule, i);
    (Tensor::from(ab.sqrt()).to_device(device), Tensor::from((1.0 - ab).sqrt()).to_device(device))
}

/// The alpha_bar step `i`'s output is read with: the sampler's own, else the schedule's at the
/// step's timestep.
fn output_alpha_bar(sampler: &dyn Sampler, schedule: &NoiseSchedule, i: usize) -> f64 {
    sampler.alpha_bar(i).unwrap_or_else(|| schedule.alpha_bar(Some(sampler.timesteps()[i])))
}

/// [`output_coefficients`] of every step at once, as two float64 vectors on `device` (one host
/// copy for the whole run): step i's pair is `.get(i)` of each, read on the device, so the
/// sampling loop copies nothing to the device per step (a synchronous copy, illegal inside a
/// CUDA graph capture).
pub fn output_coefficient_table(sampler: &dyn Sampler, schedule: &NoiseSchedule, device: tch::Device) -> (Tensor, Tensor) {
    let alpha_bars: Vec<f64> = (0..sampler.timesteps().len()).map(|i| output_alpha_bar(sampler, schedule, i)).collect();
    let a: Vec<f64> = alpha_bars.iter().map(|ab| ab.sqrt()).collect();
    let sg: Vec<f64> = alpha_bars.iter().map(|ab| (1.0 - ab).sqrt()).collect();
    (Tensor::from_slice(&a).to_device(device), Tensor::from_slice(&sg).to_device(device))
}

/// Descending sampling timesteps, as diffusers' `timestep_spacing` (and `steps_offset` for
/// leading spacing) defines them.
pub fn sampling_timesteps(train_steps: usize, steps: usize, spacing: Spacing, steps_offset: usize) -> Vec<usize> {
    let steps = steps.clamp(1, train_steps);
    match spacing {
        Spacing::Trailing => {
            let ratio = train_steps as f64 / steps as f64;
            (0..steps).map(|i| ((train_steps as f64 - i as f64 * ratio).round() as usize).saturating_sub(1)).collect()
        }
        Spacing::Leading => {
            let ratio = train_steps / steps;
            (0..steps).rev().map(|i| (i * ratio + steps_offset).min(train_steps - 1)).collect()
        }
        Spacing::Linspace if steps == 1 => vec![0],
        Spacing::Linspace => {
            let last = (train_steps - 1) as f64;
            // Halves to even, as numpy's round that diffusers' linspace spacing goes through.
            (0..steps).rev().map(|i| (i as f64 * last / (steps - 1) as f64).round_ties_even() as usize).collect()
        }
    }
}

/// alpha_bar at each sampling timestep and at the one after it (after the last: `final_alpha_bar`).
pub(crate) fn alpha_bars(schedule: &NoiseSchedule, ts: &[usize], final_alpha_bar: f64) -> (Vec<f64>, Vec<f64>) {
    let cur: Vec<f64> = ts.iter().map(|&t| schedule.alpha_bar(Some(t))).collect();
    let next: Vec<f64> = (0..ts.len()).map(|i| ts.get(i + 1).map_or(final_alpha_bar, |&t| schedule.alpha_bar(Some(t)))).collect();
    (cur, next)
}

pub fn build(cfg: &SamplerConfig, schedule: &NoiseSchedule) -> Box<dyn Sampler> {
    let ts = sampling_timesteps(schedule.len(), cfg.steps, cfg.spacing, cfg.steps_offset);
    (cfg.sampler.info().build)(cfg, schedule, ts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::ScheduleKind;
    use tch::{Device, Kind};

    #[test]
    fn the_coefficient_table_holds_each_steps_coefficients_bit_for_bit() {
        let schedule = NoiseSchedule::new(ScheduleKind::ScaledLinear, 1000, 0.00085, 0.012);
        for name in ["ddim", "dpm++2m-karras", "euler"] {
            let kind = SamplerKind::parse(name).expect("a registered sampler");
            let cfg = SamplerConfig { sampler: kind, steps: 7, ..Default::default() };
            let s = build(&cfg, &schedule);
            let (a_all, sg_all) = output_coefficient_table(s.as_ref(), &schedule, Device::Cpu);
            for i in 0..s.timesteps().len() {
                let (a, sg) = output_coefficients(s.as_ref(), &schedule, i, Device::Cpu);
                assert!(a_all.get(i as i64).equal(&a) && sg_all.get(i as i64).equal(&sg), "{name} step {i}");
            }
        }
    }

    #[test]
    fn trailing_spacing_matches_diffusers() {
        let ts = sampling_timesteps(1000, 25, Spacing::Trailing, 0);
        assert_eq!(ts.len(), 25);
        assert_eq!(&ts[..3], &[999, 959, 919]);
        assert_eq!(*ts.last().unwrap(), 39);
        let lead = sampling_timesteps(1000, 50, Spacing::Leading, 0);
        assert_eq!((lead[0], lead[49]), (980, 0));
        // diffusers 0.35.2, DDIMScheduler.set_timesteps(7) with each spacing (leading: steps_offset 1).
        assert_eq!(sampling_timesteps(1000, 7, Spacing::Leading, 1), [853, 711, 569, 427, 285, 143, 1]);
        assert_eq!(sampling_timesteps(1000, 7, Spacing::Trailing, 0), [999, 856, 713, 570, 428, 285, 142]);
        assert_eq!(sampling_timesteps(1000, 7, Spacing::Linspace, 0), [999, 832, 666, 500, 333, 166, 0]);
    }

    /// The conformance test every sampler must pass: fed the exact (x0, eps) of a known clean
    /// image at every step, it must land on that image.
    #[test]
    fn every_sampler_recovers_the_clean_image_from_exact_predictions() {
        let schedule = NoiseSchedule::new(ScheduleKind::Cosine, 1000, 1e-4, 0.02);
        let x0 = Tensor::rand([2, 1, 8, 8], (Kind::Double, Device::Cpu)) * 1.6 - 0.8;
        for kind in SamplerKind::all() {
            for eta in [0.0, 1.0] {
                let cfg = SamplerConfig { sampler: kind, steps: 20, eta, ..Default::default() };
                let mut s = build(&cfg, &schedule);
                let mut x = Tensor::randn([2, 1, 8, 8], (Kind::Double, Device::Cpu));
                let ts = s.timesteps().to_vec();
                for (i, &t) in ts.iter().enumerate() {
                    let ab = schedule.alpha_bar(Some(t));
                    let eps = (&x - &x0 * ab.sqrt()) / (1.0 - ab).sqrt();
                    let mut noise = || Tensor::randn([2, 1, 8, 8], (Kind::Double, Device::Cpu));
                    x = s.step(i, &x, &x0, &eps, &mut noise);
                }
                let err = (&x - &x0).abs().max().double_value(&[]);
                assert!(err < 1e-6, "{kind:?} eta {eta}: off by {err}");
            }
        }
    }

    #[test]
    fn names_and_aliases_come_from_the_registry() {
        assert_eq!(SamplerKind::names(), vec!["ddim", "ddpm", "dpm++2m", "dpm++2m-karras", "euler", "euler-a", "pndm"]);
        assert_eq!(SamplerKind::parse("dpmpp2m").map(SamplerKind::name), Some("dpm++2m"));
        for alias in ["euler_a", "euler-ancestral"] {
            assert_eq!(SamplerKind::parse(alias).map(SamplerKind::name), Some("euler-a"));
        }
        assert_eq!(SamplerKind::parse("plms").map(SamplerKind::name), Some("pndm"));
        let err = "heun".parse::<SamplerKind>().unwrap_err();
        assert_eq!(err, "\"heun\": expected \"ddim\", \"ddpm\", \"dpm++2m\", \"dpm++2m-karras\", \"euler\", \"euler-a\" or \"pndm\"");
        let json = serde_json::to_string(&SamplerKind::ddim()).unwrap();
        assert_eq!(json, "\"ddim\"");
    }
}
