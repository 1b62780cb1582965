//! Betas and alphas_cumprod against diffusers' DDPMScheduler (fixture made by
//! tools/make_schedule_fixtures.py). diffusers computes in float32, we in float64, hence the
//! tolerances.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use difforge_diffusion::{NoiseSchedule, ScheduleKind};

#[test]
fn schedules_match_diffusers() {
    let text = include_str!("fixtures/schedules.json");
    let doc: serde_json::Value = serde_json::from_str(text).expect("fixture is JSON");
    let cases = doc["schedules"].as_array().expect("schedules");
    assert_eq!(cases.len(), 6);
    for case in cases {
        let kind: ScheduleKind = case["kind"].as_str().expect("kind").parse().expect("a known schedule");
        let steps = case["timesteps"].as_u64().expect("timesteps") as usize;
        let ours = NoiseSchedule::new(kind, steps, case["beta_start"].as_f64().unwrap(), case["beta_end"].as_f64().unwrap());
        let floats = |key: &str| -> Vec<f64> { case[key].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect() };
        let (betas, abar) = (floats("betas"), floats("alphas_cumprod"));
        assert_eq!(ours.betas.len(), betas.len());
        for t in 0..steps {
            let tol_b = 1e-6 * betas[t].abs().max(1e-4);
            assert!((ours.betas[t] - betas[t]).abs() <= tol_b, "{kind:?}/{steps} beta[{t}]: {} vs {}", ours.betas[t], betas[t]);
            assert!((ours.alphas_cumprod[t] - abar[t]).abs() <= 2e-6, "{kind:?}/{steps} abar[{t}]: {} vs {}", ours.alphas_cumprod[t], abar[t]);
        }
    }
}
