//! `difforge finetune` and `difforge lora merge`.

use crate::cli::FinetuneArgs;
use difforge_data::SourceKind;
use difforge_train::checkpoint::{self, CheckpointTensors};
use difforge_train::{adapter, train, RunConfig, TrainOptions};
use std::path::{Path, PathBuf};

/// Copies every key of `over` into `base`, descending into tables.
fn deep_merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => deep_merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// The class names of a base model, in label order.
fn base_class_names(cfg: &RunConfig) -> Vec<String> {
    let k = cfg.model.num_classes.max(0) as usize;
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
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("--config {}: {e}", path.display()))?;
        deep_merge(&mut table, text.parse().map_err(|e| anyhow::anyhow!("--config {}: {e}", path.display()))?);
    }
    let lora = match args.method.as_str() {
        "lora" => true,
        "full" => false,
        other => anyhow::bail!("--method {other}: expected lora or full"),
    };
    if !lora {
        table.remove("lora");
    } else if !table.contains_key("lora") {
        table.insert("lora".into(), toml::Value::Table(Default::default()));
    }
    let mut names = base_class_names(&base);
    let mut added = false;
    if base.model.num_classes > 0 {
        for c in subfolders(&args.data)? {
            if !names.contains(&c) {
                eprintln!("new class `{c}` (label {})", names.len());
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
    if base.model.num_classes > 0 {
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
    if !checkpoint::list(&out_dir)?.is_empty() {
        anyhow::bail!("{} already holds checkpoints: choose another --out", out_dir.display());
    }
    let stop = super::stop_on_signals()?;
    let evaluator: Box<dyn difforge_train::evaluator::Evaluator> = Box::new(difforge_eval::training::TrainingEvaluator::new());
    let summary = train(cfg, &TrainOptions { out_dir: out_dir.clone(), resume: false, resume_sets: Vec::new(), stop, evaluator: Some(evaluator) })?;
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
    let base_dir = checkpoint::resolve(base)?;
    let model = adapter::load_with_adapter(&base_dir, lora, 1.0, tch::Device::Cpu)?;
    let weights = adapter::merged_weights(&model, scale)?;
    let mut cfg = model.config.clone();
    cfg.lora = None;
    cfg.finetune = RunConfig::default().finetune;
    let state = checkpoint::read_state(&base_dir)?;
    let copy = |w: &[(String, tch::Tensor)]| w.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
    let tensors = CheckpointTensors { model: copy(&weights), ema: copy(&weights), optimizer: Vec::new() };
    let dir = checkpoint::write_folder(out, &tensors, &state, &cfg)?;
    println!("merged {} (scale {scale}) into {} -> {}", lora.display(), base_dir.display(), dir.display());
    Ok(())
}
