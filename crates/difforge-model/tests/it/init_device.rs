//! The seed alone decides a model's initial weights, whatever device it is built for: the
//! weights are drawn on the CPU and then moved.

use difforge_config::RunConfig;
use difforge_model::{DiffusionModel, Weights};
use tch::{Device, Tensor};

/// Model construction draws from libtorch's process-wide generator after seeding it: two tests
/// building models at once would interleave their draws, so these take turns. (Other tests of
/// this binary that build models can still interleave with them when the whole binary runs.)
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn tiny() -> RunConfig {
    RunConfig::from_toml(include_str!("../../../../configs/tiny.toml"), &[], "configs/tiny.toml").unwrap()
}

/// Every variable of the model and of its EMA copy, on the CPU, in name order.
fn weights(model: &DiffusionModel) -> Vec<(String, Tensor)> {
    let both = [Weights::Raw, Weights::Ema].into_iter().flat_map(|w| model.variables(w));
    both.map(|(n, t)| (n, t.to_device(Device::Cpu))).collect()
}

/// The devices of every variable of the model and of its EMA copy.
fn weights_on(model: &DiffusionModel) -> impl Iterator<Item = Device> + '_ {
    [Weights::Raw, Weights::Ema].into_iter().flat_map(|w| model.variables(w)).map(|(_, t)| t.device())
}

fn assert_same(a: &[(String, Tensor)], b: &[(String, Tensor)]) {
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs");
    }
}

#[test]
fn the_same_seed_gives_the_same_initial_weights() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let cfg = tiny();
    let a = weights(&DiffusionModel::new(&cfg, Device::Cpu).unwrap());
    assert_same(&a, &weights(&DiffusionModel::new(&cfg, Device::Cpu).unwrap()));
    let mut other = cfg.clone();
    other.seed += 1;
    let c = weights(&DiffusionModel::new(&other, Device::Cpu).unwrap());
    assert!(a.iter().zip(&c).any(|((_, x), (_, y))| !x.equal(y)), "another seed gave the same weights");
}

#[test]
fn a_gpu_model_starts_from_the_cpu_models_weights() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let cfg = tiny();
    let on_gpu = DiffusionModel::new(&cfg, Device::Cuda(0));
    if !tch::Cuda::is_available() {
        // The weights were drawn (on the CPU) before the move to the GPU, which is what fails:
        // an error naming it, where drawing them on the GPU would have panicked.
        let err = on_gpu.err().expect("no CUDA device here").to_string();
        assert!(err.contains("cannot move the model's") && err.contains("Cuda(0)"), "{err}");
        return;
    }
    let on_gpu = on_gpu.unwrap();
    assert!(weights_on(&on_gpu).all(|d| d == Device::Cuda(0)));
    assert_same(&weights(&DiffusionModel::new(&cfg, Device::Cpu).unwrap()), &weights(&on_gpu));
}
