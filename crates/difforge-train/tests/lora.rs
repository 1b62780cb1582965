//! LoRA fine-tuning on tiny models: adapters start as the identity, train, are small, merge
//! into the same images, refuse foreign bases, and classes can be added.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use difforge_config::RunConfig;
use difforge_diffusion::SamplerConfig;
use difforge_model::{adapter, checkpoint, generate, Condition, DiffusionModel, GenerateSpec, Weights};
use difforge_train::{train, TrainOptions};
use std::path::{Path, PathBuf};

/// The tests' tiny config (configs/tiny.toml) with attention at 4x4 and short runs.
fn run(out: &Path, extra: &[String]) -> difforge_train::TrainSummary {
    let mut sets: Vec<String> =
        ["model.attention_resolutions=[4]", "train.warmup_steps=2", "train.sample_per_class=1", "sample.steps=3"].iter().map(|s| s.to_string()).collect();
    sets.extend(extra.iter().cloned());
    let cfg = RunConfig::from_toml(include_str!("../../../configs/tiny.toml"), &sets, "configs/tiny.toml").unwrap();
    train(cfg, TrainOptions { out_dir: out.to_path_buf(), ..Default::default() }).unwrap()
}

fn base(dir: &Path, seed: u64) -> PathBuf {
    let out = dir.join(format!("base-{seed}"));
    run(&out, &["train.steps=6".into(), format!("seed={seed}")]);
    checkpoint::resolve(&out).unwrap()
}

fn lora_sets(base: &Path, steps: u64) -> Vec<String> {
    vec![
        format!("finetune.from=\"{}\"", base.display()),
        format!("train.steps={steps}"),
        "train.lr=1e-2".into(),
        "lora.rank=2".into(),
        "lora.targets=[\"attention\", \"conv\"]".into(),
    ]
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum()
}

#[test]
fn adapters_train_stay_small_merge_exactly_and_refuse_other_bases() {
    let tmp = tempfile::tempdir().unwrap();
    let base_dir = base(tmp.path(), 0);
    let ft = tmp.path().join("ft");
    let s = run(&ft, &lora_sets(&base_dir, 8));
    let file = s.adapter.expect("an adapter file");
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(size * 20 < dir_size(&base_dir), "adapter {size} bytes vs checkpoint {} bytes", dir_size(&base_dir));

    // The base weights did not move; only adapters trained.
    let ft_ckpt = checkpoint::resolve_latest(&ft).unwrap();
    let base_t: std::collections::HashMap<String, tch::Tensor> = tch::Tensor::read_safetensors(base_dir.join("ema.safetensors")).unwrap().into_iter().collect();
    let ft_t = tch::Tensor::read_safetensors(ft_ckpt.join("model.safetensors")).unwrap();
    let mut trained = 0;
    for (name, t) in &ft_t {
        if difforge_nn::lora::is_lora_variable(name) {
            trained += usize::from(name.contains("lora_up") && t.abs().max().double_value(&[]) > 0.0);
        } else {
            assert!(t.equal(&base_t[name]), "{name} changed");
        }
    }
    assert!(trained > 0, "no adapter learnt anything");

    // Unmerged at scale 0.7 and merged at 0.7 give the same images (within 1e-3).
    let sampler = SamplerConfig { steps: 4, ..Default::default() };
    let spec = |s| GenerateSpec {
        conditions: [1, 4, 7].map(Condition::Class).to_vec(),
        seeds: vec![3, 4, 5],
        sampler: s,
        weights: Weights::Ema,
        max_batch: 8,
        fixed_batch: false,
        negatives: Vec::new(),
        size: None,
    };
    let unmerged = adapter::load_with_adapter(&base_dir, &file, 0.7, tch::Device::Cpu).unwrap();
    let a = generate(&unmerged, &spec(&sampler)).unwrap();
    let at_one = adapter::load_with_adapter(&base_dir, &file, 1.0, tch::Device::Cpu).unwrap();
    let weights = adapter::merged_weights(&at_one, 0.7).unwrap();
    let mut cfg = checkpoint::read_config(&base_dir).unwrap();
    cfg.lora = None;
    let merged = DiffusionModel::new(&cfg, tch::Device::Cpu).unwrap();
    for w in [Weights::Raw, Weights::Ema] {
        let vars = merged.var_store(w).variables();
        for (name, w) in &weights {
            tch::no_grad(|| vars[name].shallow_clone().copy_(w));
        }
    }
    let b = generate(&merged, &spec(&sampler)).unwrap();
    let diff = (&a - &b).abs().max().double_value(&[]);
    assert!(diff < 1e-3, "merged and unmerged differ by {diff}");
    let plain = generate(&checkpoint::load_model(&base_dir, &cfg, tch::Device::Cpu).unwrap(), &spec(&sampler)).unwrap();
    assert!((&a - &plain).abs().max().double_value(&[]) > 1e-3, "the adapter changes nothing");

    // Another base refuses the adapter, naming both.
    let other = base(tmp.path(), 1);
    let err = adapter::load_with_adapter(&other, &file, 1.0, tch::Device::Cpu).err().expect("refused").to_string();
    assert!(err.contains("trained on the base checkpoint") && err.contains("lora.safetensors"), "{err}");
}

#[test]
fn a_fine_tune_can_add_classes_and_keeps_the_old_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let base_dir = base(tmp.path(), 0);
    let mut sets = lora_sets(&base_dir, 2);
    sets.push("model.num_classes=12".into());
    let ft = tmp.path().join("ft");
    run(&ft, &sets);
    let old: std::collections::HashMap<String, tch::Tensor> = tch::Tensor::read_safetensors(base_dir.join("ema.safetensors")).unwrap().into_iter().collect();
    let new: std::collections::HashMap<String, tch::Tensor> =
        tch::Tensor::read_safetensors(checkpoint::resolve_latest(&ft).unwrap().join("ema.safetensors")).unwrap().into_iter().collect();
    let (o, n) = (&old["class_embedding.weight"], &new["class_embedding.weight"]);
    assert_eq!(n.size()[0], 13);
    assert!(n.narrow(0, 0, 10).equal(&o.narrow(0, 0, 10)), "old class rows changed");
    assert!(n.get(12).equal(&o.get(10)), "the null row did not move to the end");
}
