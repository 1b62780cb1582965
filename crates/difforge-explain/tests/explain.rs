//! The numbers behind the explanations, on a tiny trained model.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use difforge_config::RunConfig;
use difforge_explain::attention::attention;
use difforge_explain::attribution::attribution;
use difforge_explain::timesteps::profile;
use difforge_explain::trajectory::trajectory;
use difforge_explain::Subject;
use difforge_model::{checkpoint, generate, Condition, DiffusionModel, GenerateSpec, Weights};
use difforge_train::{train, TrainOptions};

/// The tests' tiny config (configs/tiny.toml) with attention at 4x4, trained 6 steps.
fn tiny_run(dir: &std::path::Path) -> (DiffusionModel, std::path::PathBuf) {
    let sets: Vec<String> =
        ["model.attention_resolutions=[4]", "train.steps=6", "train.warmup_steps=2", "train.val_every=3", "train.val_images=24", "train.sample_per_class=1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let cfg = RunConfig::from_toml(include_str!("../../../configs/tiny.toml"), &sets, "configs/tiny.toml").unwrap();
    let run = dir.join("run");
    train(cfg, TrainOptions { out_dir: run.clone(), ..Default::default() }).unwrap();
    let ckpt = checkpoint::resolve_latest(&run).unwrap();
    let cfg = checkpoint::read_config(&ckpt).unwrap();
    (checkpoint::load_model(&ckpt, &cfg, tch::Device::Cpu).unwrap(), run)
}

#[test]
fn explanations_agree_with_the_sampler_the_trainer_and_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let (model, run) = tiny_run(dir.path());
    let sampler = model.config().sample.clone();
    let s = Subject { model: &model, sampler: &sampler, condition: Condition::Class(3), seeds: vec![5, 6, 7] };

    // The trajectory's last x0 is the sampler's output.
    let t = trajectory(&s).unwrap();
    assert_eq!(t.steps.len(), sampler.steps);
    let spec = GenerateSpec {
        conditions: vec![Condition::Class(3); 3],
        seeds: vec![5, 6, 7],
        sampler: &sampler,
        weights: Weights::Ema,
        max_batch: 8,
        fixed_batch: false,
        negatives: Vec::new(),
        size: None,
    };
    let generated = generate(&model, &spec).unwrap();
    assert!(t.x0.last().unwrap().equal(&generated), "the last x0 differs from the sampler's output");

    // The timestep profile is the trainer's validation at the same step.
    let p = profile(&model, "tiny", 6).unwrap();
    let last: serde_json::Value =
        std::fs::read_to_string(run.join("validation.jsonl")).unwrap().lines().last().map(|l| serde_json::from_str(l).unwrap()).unwrap();
    assert_eq!(last["step"], 6);
    let bands: Vec<f64> = last["bands_ema"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(p.ema.bands.len(), bands.len());
    for (a, b) in p.ema.bands.iter().zip(&bands) {
        assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{a} vs {b}");
    }
    assert!((p.ema.loss - last["val_loss_ema"].as_f64().unwrap()).abs() < 1e-9);

    // Attention maps are distributions.
    let maps = attention(&s, &t, &[0, 2, 4], 1, (3, 5)).unwrap();
    assert_eq!(maps.len(), 3 * 4, "3 steps x 4 attention layers");
    for m in &maps {
        assert!((m.map.sum(tch::Kind::Double).double_value(&[]) - 1.0).abs() < 1e-5, "{}", m.layer);
    }

    // Attribution is non-zero for a real model, and zero when the class embedding is zeroed.
    let a = attribution(&s).unwrap();
    assert!(a.integrated_gradients.max().double_value(&[]) > 0.0);
    tch::no_grad(|| {
        for w in [Weights::Raw, Weights::Ema] {
            let _ = model.var_store(w).variables()["class_embedding.weight"].shallow_clone().zero_();
        }
    });
    let z = attribution(&s).unwrap();
    assert_eq!(z.guidance_difference.abs().max().double_value(&[]), 0.0);
    assert_eq!(z.integrated_gradients.abs().max().double_value(&[]), 0.0);
}
