//! The server merges requests into batches; an image must not depend on the batch it was in,
//! or the same request and seed would not give the same bytes.

use difforge_config::RunConfig;
use difforge_diffusion::SamplerConfig;
use difforge_model::{generate, Condition, DiffusionModel, GenerateSpec, Weights};

fn random_model() -> DiffusionModel {
    let sets: Vec<String> = ["data.image_size=16", "model.channel_mult=[1,2,2]"].iter().map(|s| s.to_string()).collect();
    let cfg = RunConfig::from_toml(include_str!("../../../../configs/tiny.toml"), &sets, "configs/tiny.toml").unwrap();
    let model = DiffusionModel::new(&cfg, tch::Device::Cpu).unwrap();
    // Random weights everywhere (a fresh model's zero-initialised output layers predict zero).
    tch::no_grad(|| {
        for (_, mut p) in model.variables(Weights::Raw).into_iter().chain(model.variables(Weights::Ema)) {
            let noise = p.randn_like() * 0.05;
            let _ = p.g_add_(&noise);
        }
    });
    model
}

#[test]
fn with_a_fixed_batch_an_image_is_bit_identical_whatever_it_is_batched_with() {
    let model = random_model();
    let sampler = SamplerConfig { steps: 4, ..Default::default() };
    let run = |classes: Vec<i64>, seeds: Vec<u64>| {
        let conditions = classes.into_iter().map(Condition::Class).collect();
        generate(
            &model,
            &GenerateSpec { conditions, seeds, sampler: &sampler, weights: Weights::Ema, max_batch: 4, fixed_batch: true, negatives: Vec::new(), size: None },
        )
        .unwrap()
    };
    let alone = run(vec![3], vec![5]);
    for (classes, seeds, at) in [(vec![1, 3, 7], vec![1, 5, 7], 1), (vec![7, 8, 9, 4, 3], vec![6, 7, 8, 9, 5], 4), (vec![3, 2], vec![5, 6], 0)] {
        let batch = run(classes, seeds);
        let diff = (batch.get(at) - alone.get(0)).abs().max().double_value(&[]);
        assert_eq!(diff, 0.0, "the image differs by {diff} in another batch");
    }
}

/// The server passes negatives for a whole batch when any request in it has one; the others get
/// `Unconditional`, which must be the family's own null, or their images would change.
#[test]
fn an_unconditional_negative_is_the_null_and_a_class_negative_steers() {
    let model = random_model();
    let sampler = SamplerConfig { steps: 4, guidance: 3.0, ..Default::default() };
    let run = |negatives: Vec<Condition>| {
        let spec = GenerateSpec {
            conditions: vec![Condition::Class(3), Condition::Class(4)],
            seeds: vec![5, 6],
            sampler: &sampler,
            weights: Weights::Ema,
            max_batch: 4,
            fixed_batch: true,
            negatives,
            size: None,
        };
        generate(&model, &spec).unwrap()
    };
    let plain = run(Vec::new());
    let null = run(vec![Condition::Unconditional; 2]);
    assert_eq!((plain.shallow_clone() - null).abs().max().double_value(&[]), 0.0);
    let steered = run(vec![Condition::Class(7), Condition::Unconditional]);
    assert!((plain.get(0) - steered.get(0)).abs().max().double_value(&[]) > 1e-4, "a negative changes the image");
    assert_eq!((plain.get(1) - steered.get(1)).abs().max().double_value(&[]), 0.0, "and only its own");
}

/// `clip_x0` clamps a predicted clean image; a latent model's clean latents are not bounded to
/// [-1, 1], so it never clamps them (clamping made the SD family's samples noisy).
#[test]
fn only_pixel_models_clamp_the_predicted_clean_image() {
    let clamping = SamplerConfig { clip_x0: true, ..Default::default() };
    assert!(difforge_model::generate::sampler_for(&random_model(), &clamping).clip_x0);
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../difforge-nn/tests/fixtures/sd/tiny-sd15");
    let text = format!(
        "[data]\nsource = \"folder\"\npath = \"unused\"\nimage_size = 32\nchannels = 3\n[model]\nfamily = \"stable-diffusion\"\nbase = \"{}\"\n\
         [diffusion]\nschedule = \"scaled_linear\"\nbeta_start = 0.00085\nbeta_end = 0.012\ntimesteps = 1000\nprediction = \"epsilon\"\n",
        base.display()
    );
    let cfg = RunConfig::from_toml(&text, &[], "test").unwrap();
    let sd = DiffusionModel::new(&cfg, tch::Device::Cpu).unwrap();
    assert!(!difforge_model::generate::sampler_for(&sd, &clamping).clip_x0);
}
