//! `difforge finetune` and `difforge lora merge`.

use crate::cli::{FinetuneArgs, FinetuneMethod};
use difforge_config::{deep_merge, RunConfig};
use difforge_core::ConfigError;
use difforge_data::SourceKind;
use difforge_model::checkpoint::{self, CheckpointTensors};
use difforge_model::{adapter, family::condition_kind_of};
use difforge_train::{train, TrainOptions};
use std::path::{Path, PathBuf};

/// The class names of a class-conditional base model with `k` classes, in label order.
fn base_class_names(cfg: &RunConfig, k: usize) -> Vec<String> {
    if !cfg.data.class_names.is_empty() {
        return cfg.data.class_names.clone();
    }
    if let (SourceKind::Folder, Some(path)) = (cfg.data.source, &cfg.data.path) {
        if let Ok(entries) = std::fs::read_dir(path) {
            let mut names: Vec<String> = entries.flatten().filter(|e| e.path().is_dir()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            names.sort();
            if names.len() == k {
                return names;
            }
        }
    }
    (0..k).map(|c| c.to_string()).collect()
}

fn subfolders(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("--data {}: {e}", dir.display()))?
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

pub fn run(args: FinetuneArgs) -> anyhow::Result<()> {
    let base_dir = checkpoint::resolve(&args.from)?;
    let base = checkpoint::read_config(&base_dir)?;
    let mut table: toml::Table = base.to_toml().parse()?;
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::new("--config", path.display(), format!("a readable TOML file ({e})")))?;
        deep_merge(&mut table, text.parse().map_err(|e: toml::de::Error| ConfigError::new("--config", path.display(), format!("TOML ({})", e.message())))?);
    }
    let lora = args.method == FinetuneMethod::Lora;
    if !lora {
        table.remove("lora");
    } else if !table.contains_key("lora") {
        table.insert("lora".into(), toml::Value::Table(Default::default()));
    }
    let classes = condition_kind_of(&base.model).classes();
    let mut names = base_class_names(&base, classes.unwrap_or(0) as usize);
    let mut added = false;
    if classes.is_some() {
        for c in subfolders(&args.data)? {
            if !names.contains(&c) {
                tracing::info!("new class `{c}` (label {})", names.len());
                names.push(c);
                added = true;
            }
        }
    }
    let mut sets = vec![
        format!("finetune.from={}", toml::Value::String(base_dir.display().to_string())),
        "data.source=\"folder\"".to_string(),
        format!("data.path={}", toml::Value::String(args.data.display().to_string())),
    ];
    if classes.is_some() {
        sets.push(format!("data.class_names={}", toml::Value::Array(names.iter().cloned().map(toml::Value::String).collect())));
        sets.push(format!("model.num_classes={}", names.len()));
    }
    if added && lora {
        // New classes need their embedding rows learnt: the adapter carries the table.
        sets.push("lora.train_class_embedding=true".into());
    }
    sets.extend(args.sets.iter().cloned());
    let text = toml::to_string(&table)?;
    let cfg = RunConfig::from_toml(&text, &sets, "the fine-tune config")?;
    let out_dir = args.out.clone().unwrap_or_else(|| PathBuf::from("runs/finetune"));
    let stop = super::stop_on_signals()?;
    let opts = TrainOptions {
        out_dir: out_dir.clone(),
        resume: false,
        overwrite: args.overwrite,
        resume_sets: Vec::new(),
        stop,
        evaluator: Some(super::train::sample_evaluation()),
    };
    let summary = train(cfg, opts)?;
    if args.json {
        return super::print_json(&summary);
    }
    println!("{}: step {}/{}, {}", out_dir.display(), summary.final_step, summary.steps_planned, summary.stopped_because);
    if let Some(a) = &summary.adapter {
        let size = std::fs::metadata(a).map(|m| m.len()).unwrap_or(0);
        println!("  adapter     {} ({size} bytes)", a.display());
    }
    if let Some(c) = &summary.checkpoint {
        println!("  checkpoint  {}", c.display());
    }
    Ok(())
}

pub fn merge(base: &Path, lora: &Path, scale: f64, out: &Path) -> anyhow::Result<()> {
    if !(scale.is_finite() && (-10.0..=10.0).contains(&scale)) {
        return Err(ConfigError::new("--scale", scale, "a number in -10..=10").into());
    }
    let base_dir = checkpoint::resolve(base)?;
    let model = adapter::load_with_adapter(&base_dir, lora, 1.0, tch::Device::Cpu)?;
    let weights = adapter::merged_weights(&model, scale)?;
    let mut cfg = model.config().clone();
    cfg.lora = None;
    cfg.finetune = RunConfig::default().finetune;
    let state = checkpoint::read_state(&base_dir)?;
    let copy = |w: &[(String, tch::Tensor)]| w.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
    let tensors = CheckpointTensors { model: copy(&weights), ema: copy(&weights), optimizer: Vec::new() };
    let dir = checkpoint::write_folder(out, &tensors, &state, &cfg)?;
    println!("merged {} (scale {scale}) into {} -> {}", lora.display(), base_dir.display(), dir.display());
    Ok(())
}
