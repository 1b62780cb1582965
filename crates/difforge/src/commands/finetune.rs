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

/// A published Stable Diffusion model (a diffusers folder or a single file) rather than a
/// difforge checkpoint or run folder.
fn is_stable_diffusion(path: &Path) -> bool {
    difforge_model::stable_diffusion::is_diffusers_folder(path) || path.is_file()
}

/// The run config of `difforge finetune --from <SD folder>`: captioned images of `data` at the
/// base's own size, its scheduler for `[diffusion]` and `[sample]` (filled by `run_defaults`),
/// and kohya's usual LoRA steps (batch 1, lr 1e-4; 1e-5 for every weight), before the user's
/// `--config` and `--set`.
fn stable_diffusion_table(base: &Path, data: &Path, lora: bool) -> anyhow::Result<toml::Table> {
    if !difforge_model::stable_diffusion::is_diffusers_folder(base) {
        let hint = "a diffusers folder (convert a single file first: difforge convert --from FILE --to diffusers --config DIR --out FOLDER)";
        return Err(ConfigError::new("--from", base.display(), hint).into());
    }
    let published = difforge_model::stable_diffusion::published::run_config(base)?;
    let text = format!(
        "[data]\nsource = \"folder\"\nimage_size = {size}\nchannels = 3\nval_fraction = 0.05\n\
         [model]\nfamily = \"stable-diffusion\"\n\
         [train]\nsteps = 1000\nbatch_size = 1\nlr = {lr}\nwarmup_steps = 0\ncheckpoint_every = 250\nval_every = 250\nsample_every = 250\nsample_per_class = 2\n",
        size = published.data.image_size,
        lr = if lora { 1e-4 } else { 1e-5 },
    );
    let mut table: toml::Table = text.parse()?;
    for (key, value) in [("data.path", data.display().to_string()), ("model.base", base.display().to_string())] {
        difforge_config::apply_set(&mut table, &format!("{key}={}", toml::Value::String(value)))?;
    }
    if lora {
        table.insert("lora".into(), toml::Value::Table(Default::default()));
    }
    Ok(table)
}

/// `difforge finetune --from <SD folder>`: LoRA (or, with `--method full`, every UNet weight) on
/// a folder of captioned images.
fn finetune_stable_diffusion(args: &FinetuneArgs) -> anyhow::Result<RunConfig> {
    let mut table = stable_diffusion_table(&args.from, &args.data, args.method == FinetuneMethod::Lora)?;
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::new("--config", path.display(), format!("a readable TOML file ({e})")))?;
        deep_merge(&mut table, text.parse().map_err(|e: toml::de::Error| ConfigError::new("--config", path.display(), format!("TOML ({})", e.message())))?);
    }
    let text = toml::to_string(&table)?;
    Ok(RunConfig::from_toml_with(&text, &args.sets, "the fine-tune config", &difforge_model::stable_diffusion::run_defaults)?)
}

pub fn run(args: FinetuneArgs) -> anyhow::Result<()> {
    let cfg = if is_stable_diffusion(&args.from) { finetune_stable_diffusion(&args)? } else { checkpoint_finetune_config(&args)? };
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
    for path in summary.exported.iter().filter(|p| Some(*p) != summary.adapter.as_ref()) {
        println!("  exported    {}", path.display());
    }
    if let Some(c) = &summary.checkpoint {
        println!("  checkpoint  {}", c.display());
    }
    Ok(())
}

/// The config of a fine-tune of a difforge checkpoint: the base's own config with the new data
/// (new class folders become new classes), the user's `--config` and `--set` over it.
fn checkpoint_finetune_config(args: &FinetuneArgs) -> anyhow::Result<RunConfig> {
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
    Ok(RunConfig::from_toml(&text, &sets, "the fine-tune config")?)
}

pub fn merge(base: &Path, lora: &Path, scale: f64, out: &Path, half: bool) -> anyhow::Result<()> {
    if !(scale.is_finite() && (-10.0..=10.0).contains(&scale)) {
        return Err(ConfigError::new("--scale", scale, "a number in -10..=10").into());
    }
    if is_stable_diffusion(base) {
        return super::lora::merge_into_stable_diffusion(base, lora, scale, out, half);
    }
    if half {
        return Err(ConfigError::problem("--half", "only for a Stable Diffusion --base written to a single .safetensors file").into());
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
