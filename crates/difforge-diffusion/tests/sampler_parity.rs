//! The Euler, Euler ancestral, PNDM and DPM-Solver++(2M) samplers against diffusers 0.35.2's
//! EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, PNDMScheduler (skip_prk_steps) and
//! DPMSolverMultistepScheduler (also with Karras sigmas), step by step, with Stable
//! Diffusion's betas (fixture made by tools/make_sampler_fixtures.py). diffusers' Euler
//! schedulers work in sigma space (x0 + sigma * eps), the samplers in variance-preserving space
//! (x_t = x_sigma / sqrt(sigma^2 + 1)); diffusers in float32, the test in float64, hence the 1e-5
//! relative tolerance.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use difforge_diffusion::sampler::{build, output_coefficients, Sampler};
use difforge_diffusion::{NoiseSchedule, Prediction, SamplerConfig, SamplerKind, ScheduleKind, Spacing};
use std::collections::HashMap;
use std::path::PathBuf;
use tch::{Kind, Tensor};

const TOLERANCE: f64 = 1e-5;

struct Case {
    name: &'static str,
    sampler: &'static str,
    steps: usize,
    spacing: Spacing,
    offset: usize,
    prediction: Prediction,
    zero_snr: bool,
}

const fn case(name: &'static str, sampler: &'static str, spacing: Spacing, offset: usize, prediction: Prediction, zero_snr: bool) -> Case {
    Case { name, sampler, steps: 10, spacing, offset, prediction, zero_snr }
}

const fn pndm(name: &'static str, steps: usize, spacing: Spacing, offset: usize) -> Case {
    Case { name, sampler: "pndm", steps, spacing, offset, prediction: Prediction::Epsilon, zero_snr: false }
}

const fn dpm(name: &'static str, sampler: &'static str, steps: usize, spacing: Spacing, offset: usize, prediction: Prediction, zero_snr: bool) -> Case {
    Case { name, sampler, steps, spacing, offset, prediction, zero_snr }
}

/// The cases of tools/make_sampler_fixtures.py.
const CASES: &[Case] = &[
    case("euler_leading_eps", "euler", Spacing::Leading, 1, Prediction::Epsilon, false),
    case("euler_trailing_eps", "euler", Spacing::Trailing, 0, Prediction::Epsilon, false),
    case("euler_leading_v", "euler", Spacing::Leading, 1, Prediction::V, false),
    case("euler_trailing_v_zsnr", "euler", Spacing::Trailing, 0, Prediction::V, true),
    case("euler_a_leading_eps", "euler-a", Spacing::Leading, 1, Prediction::Epsilon, false),
    case("euler_a_trailing_eps", "euler-a", Spacing::Trailing, 0, Prediction::Epsilon, false),
    case("euler_a_leading_v", "euler-a", Spacing::Leading, 1, Prediction::V, false),
    pndm("pndm_leading_eps", 10, Spacing::Leading, 1),
    pndm("pndm_trailing7_eps", 7, Spacing::Trailing, 0),
    pndm("pndm_linspace2_eps", 2, Spacing::Linspace, 0),
    dpm("dpm_leading_eps", "dpm++2m", 10, Spacing::Leading, 1, Prediction::Epsilon, false),
    dpm("dpm_leading25_eps", "dpm++2m", 25, Spacing::Leading, 1, Prediction::Epsilon, false),
    dpm("dpm_linspace_v", "dpm++2m", 10, Spacing::Linspace, 0, Prediction::V, false),
    dpm("dpm_trailing_v_zsnr", "dpm++2m", 10, Spacing::Trailing, 0, Prediction::V, true),
    dpm("dpm_karras_eps", "dpm++2m-karras", 20, Spacing::Leading, 1, Prediction::Epsilon, false),
    dpm("dpm_karras_v", "dpm++2m-karras", 10, Spacing::Leading, 1, Prediction::V, false),
];

fn fixtures() -> HashMap<String, Tensor> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd_samplers.safetensors");
    let tensors = Tensor::read_safetensors(&path).expect("tools/make_sampler_fixtures.py wrote the fixture");
    tensors.into_iter().map(|(k, v)| (k, v.to_kind(Kind::Double))).collect()
}

/// Largest |a - b| relative to max |b|.
fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(1e-12)
}

/// What diffusers' own float32 arithmetic can promise, relative to its output: its step adds to
/// the input sample, whose rounding (2 ulp) matters where the input is much larger than the
/// output (the first step from sigma 4096 with zero terminal SNR: 1e4 down to 50, 1.8e-5).
fn float32_floor(input: &Tensor, output: &Tensor) -> f64 {
    2.0 * f64::from(f32::EPSILON) * input.abs().max().double_value(&[]) / output.abs().max().double_value(&[]).max(1e-12)
}

fn schedule(c: &Case) -> NoiseSchedule {
    let s = NoiseSchedule::new(ScheduleKind::ScaledLinear, 1000, 0.00085, 0.012);
    if c.zero_snr {
        s.rescaled_to_zero_terminal_snr()
    } else {
        s
    }
}

/// The noise level at t as diffusers' Euler schedulers have it: an alpha_bar of 0 made 2^-24.
fn sigma(schedule: &NoiseSchedule, t: usize) -> f64 {
    let ab = schedule.alpha_bar(Some(t));
    let ab = if ab > 0.0 { ab } else { 1.0 / 16_777_216.0 };
    ((1.0 - ab) / ab).sqrt()
}

/// The sampler's (sigma, next sigma) at each step: the Euler samplers' sigma-space view of x_t;
/// None for the others, which diffusers runs in x_t as they do.
fn sigma_pairs(c: &Case, schedule: &NoiseSchedule, ts: &[usize], refs: &HashMap<String, Tensor>) -> Option<Vec<(f64, f64)>> {
    if !c.sampler.starts_with("euler") {
        return None;
    }
    let mut sigmas: Vec<f64> = ts.iter().map(|&t| sigma(schedule, t)).collect();
    sigmas.push(0.0);
    let theirs: Vec<f64> = Vec::try_from(&refs[&format!("{}.sigmas", c.name)]).unwrap();
    assert_eq!(sigmas.len(), theirs.len());
    for (ours, theirs) in sigmas.iter().zip(&theirs) {
        assert!((ours - theirs).abs() <= TOLERANCE * theirs, "{}: sigma {ours} vs {theirs}", c.name);
    }
    Some(sigmas.windows(2).map(|w| (w[0], w[1])).collect())
}

/// One step's references: diffusers' input sample, the model output and the noise it drew.
struct StepRefs {
    i: usize,
    /// The Euler samplers' (sigma, next sigma).
    sigmas: Option<(f64, f64)>,
    sample: Tensor,
    out: Tensor,
    noise: Option<Tensor>,
}

/// One step from diffusers' input; returns the output in diffusers' space and how many noise
/// draws the sampler asked for.
fn step(c: &Case, schedule: &NoiseSchedule, s: &mut dyn Sampler, r: &StepRefs) -> (Tensor, usize) {
    // The model's (x0, eps) with diffusers' own coefficients: for the Euler schedulers
    // a = 1 / sqrt(sigma^2 + 1), s = sigma * a, which with zero terminal SNR are those of the
    // floored alpha_bar.
    let (scale, next_scale, a, sd) = match r.sigmas {
        Some((sigma, next)) => {
            let (scale, next_scale) = ((sigma * sigma + 1.0).sqrt(), (next * next + 1.0).sqrt());
            (scale, next_scale, Tensor::from(1.0 / scale), Tensor::from(sigma / scale))
        }
        None => {
            // As the sampling loop reads the output: at the sampler's own noise level if it has one.
            let (a, sd) = output_coefficients(s, schedule, r.i, tch::Device::Cpu);
            (1.0, 1.0, a, sd)
        }
    };
    let x = &r.sample / scale;
    let (x0, eps) = c.prediction.split(&r.out, &x, &a, &sd);
    let mut draws = 0;
    let mut draw = || {
        draws += 1;
        r.noise.as_ref().expect("only Euler ancestral draws noise").shallow_clone()
    };
    let next = s.step(r.i, &x, &x0, &eps, &mut draw);
    (next * next_scale, draws)
}

/// Every step of one case; returns the worst relative error.
fn check(c: &Case, refs: &HashMap<String, Tensor>) -> f64 {
    let r = |key: &str| &refs[&format!("{}.{key}", c.name)];
    let schedule = schedule(c);
    let sampler = SamplerKind::parse(c.sampler).unwrap();
    let cfg = SamplerConfig { sampler, steps: c.steps, spacing: c.spacing, steps_offset: c.offset, set_alpha_to_one: false, ..Default::default() };
    let mut s = build(&cfg, &schedule);
    let ts = s.timesteps().to_vec();
    let want: Vec<f64> = Vec::try_from(r("timesteps")).unwrap();
    assert_eq!(ts.iter().map(|&t| t as f64).collect::<Vec<_>>(), want, "{}: timesteps", c.name);

    let sigmas = sigma_pairs(c, &schedule, &ts, refs);
    let init: Vec<f64> = Vec::try_from(r("init_noise_sigma")).unwrap();
    let start = sigmas.as_ref().map_or(init[0], |s| init[0] / (s[0].0 * s[0].0 + 1.0).sqrt());
    assert!((s.start_scale() - start).abs() < TOLERANCE, "{}: starting scale {} vs {start}", c.name, s.start_scale());

    let stochastic = sampler.info().stochastic;
    let mut worst = 0.0f64;
    for (i, &t) in ts.iter().enumerate() {
        let (sample, out) = (r("samples").get(i as i64), r("model_outputs").get(i as i64));
        let noise = stochastic.then(|| r("noise").get(i as i64));
        let refs = StepRefs { i, sigmas: sigmas.as_ref().map(|s| s[i]), sample, out, noise };
        let (got, draws) = step(c, &schedule, s.as_mut(), &refs);
        // Euler ancestral's last step (to sigma 0) needs no noise; diffusers draws it unused.
        assert_eq!(draws, usize::from(stochastic && i + 1 < ts.len()), "{} step {i}: noise draws", c.name);
        let want = r("prev_samples").get(i as i64);
        let err = relative_error(&got, &want);
        let tolerance = TOLERANCE.max(float32_floor(&refs.sample, &want));
        assert!(err < tolerance, "{} step {i} (t = {t}): relative error {err:e} (tolerance {tolerance:e})", c.name);
        worst = worst.max(err);
    }
    worst
}

#[test]
fn euler_pndm_and_dpm_samplers_match_diffusers_step_by_step() {
    let refs = fixtures();
    let mut worst: HashMap<&str, f64> = HashMap::new();
    for c in CASES {
        let err = check(c, &refs);
        eprintln!("{}: worst relative error {err:.2e}", c.name);
        let w = worst.entry(c.sampler).or_default();
        *w = w.max(err);
    }
    eprintln!("worst per sampler: {worst:?}");
}
