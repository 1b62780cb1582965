//! Flow matching against diffusers 0.35.2's FlowMatchEulerDiscreteScheduler (fixture made by
//! tools/make_flow_match_fixtures.py): the training sigmas, the sampling sigmas and timesteps of
//! set_timesteps (static shift, dynamic shift, shift_terminal, 1 to 28 steps) and an Euler step,
//! all bit for bit in float32.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use difforge_diffusion::flow::{euler_step, FlowMatchConfig};
use serde_json::Value;
use tch::Tensor;

fn fixture() -> Value {
    serde_json::from_str(include_str!("fixtures/flow_match.json")).expect("fixture is JSON")
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().expect("an array").iter().map(|x| x.as_f64().expect("a number") as f32).collect()
}

fn config_of(c: &Value) -> FlowMatchConfig {
    FlowMatchConfig {
        train_timesteps: c["num_train_timesteps"].as_u64().unwrap() as usize,
        shift: c["shift"].as_f64().unwrap(),
        dynamic_shifting: c["use_dynamic_shifting"].as_bool().unwrap_or(false),
        shift_terminal: c["shift_terminal"].as_f64(),
    }
}

#[test]
fn schedules_match_diffusers_bit_for_bit() {
    let doc = fixture();
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 14);
    for case in cases {
        let config = config_of(&case["config"]);
        let steps = case["steps"].as_u64().unwrap() as usize;
        if !case["train_sigmas"].is_null() {
            assert_eq!(config.train_sigmas(), floats(&case["train_sigmas"]), "{config:?}: training sigmas");
        }
        let ours = config.sampling(steps, case["mu"].as_f64()).unwrap();
        assert_eq!(ours.sigmas, floats(&case["sigmas"]), "{config:?}, {steps} steps: sigmas");
        assert_eq!(ours.timesteps, floats(&case["timesteps"]), "{config:?}, {steps} steps: timesteps");
    }
}

#[test]
fn an_euler_step_matches_diffusers() {
    let doc = fixture();
    let e = &doc["euler"];
    let config = FlowMatchConfig { shift: e["shift"].as_f64().unwrap(), ..FlowMatchConfig::default() };
    let schedule = config.sampling(e["steps"].as_u64().unwrap() as usize, None).unwrap();
    let i = e["index"].as_u64().unwrap() as usize;
    let (x, v) = (Tensor::from_slice(&floats(&e["x"])), Tensor::from_slice(&floats(&e["v"])));
    let next = euler_step(&x, &v, schedule.sigmas[i], schedule.sigmas[i + 1]);
    assert_eq!(Vec::<f32>::try_from(&next).unwrap(), floats(&e["next"]));
}

#[test]
fn bad_requests_are_refused() {
    let config = FlowMatchConfig { dynamic_shifting: true, ..FlowMatchConfig::default() };
    assert!(config.sampling(4, None).unwrap_err().contains("mu"));
    assert!(FlowMatchConfig::default().sampling(0, None).is_err());
    let terminal = FlowMatchConfig { shift_terminal: Some(0.02), ..FlowMatchConfig::default() };
    assert!(terminal.sampling(1, None).unwrap_err().contains("shift_terminal"), "diffusers divides by zero here");
}
