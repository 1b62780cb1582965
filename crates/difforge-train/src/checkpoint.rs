//! Checkpoints: a folder `checkpoints/step-NNNNNNNN/` with the weights, the EMA weights, the
//! optimiser moments, the training state, the config and a manifest listing every file with its
//! size and SHA-256. The folder is written under a temporary name, synced, then renamed: a
//! checkpoint either exists whole or not at all, and one whose manifest does not match is refused.

use crate::config::RunConfig;
use crate::error::TrainError;
use crate::model::{sorted_variables, DiffusionModel};
use crate::optimizer::AdamW;
use difforge_core::{sha256_file, write_atomic};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::Device;

pub const MODEL_FILE: &str = "model.safetensors";
pub const EMA_FILE: &str = "ema.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "state.json";
pub const CONFIG_FILE: &str = "config.toml";
pub const MANIFEST_FILE: &str = "manifest.json";

/// Where training stands: enough to continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Training steps completed (the next step to run).
    pub step: u64,
    /// Optimiser updates applied (differs from `step` when steps were skipped).
    pub optimizer_steps: u64,
    pub images_seen: u64,
    pub elapsed_s: f64,
    pub last_loss: f64,
    /// Multiplies the scheduled learning rate; lowered at each rollback.
    #[serde(default = "one")]
    pub lr_scale: f64,
    #[serde(default)]
    pub rollbacks: u32,
    #[serde(default)]
    pub skipped_steps: u64,
    #[serde(default)]
    pub loss_spikes: u64,
    /// The best value of the early-stopping metric so far.
    #[serde(default)]
    pub best: Option<BestMetric>,
    /// Validations since the best one.
    #[serde(default)]
    pub validations_without_improvement: u32,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestMetric {
    pub metric: String,
    pub value: f64,
    pub step: u64,
}

impl TrainState {
    pub fn fresh() -> TrainState {
        TrainState {
            step: 0,
            optimizer_steps: 0,
            images_seen: 0,
            elapsed_s: 0.0,
            last_loss: f64::NAN,
            lr_scale: 1.0,
            rollbacks: 0,
            skipped_steps: 0,
            loss_spikes: 0,
            best: None,
            validations_without_improvement: 0,
        }
    }
}

/// The folder of the best checkpoint (by the early-stopping metric) of a run.
pub const BEST_DIR: &str = "best";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub step: u64,
    pub files: Vec<ManifestEntry>,
}

fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

fn torch_err(path: &Path) -> impl Fn(tch::TchError) -> TrainError + '_ {
    move |e| TrainError::checkpoint(path, e.to_string())
}

/// Writes a checkpoint of `model`, `opt` and `state` under `run_dir/checkpoints/`, then keeps
/// only the newest `keep` ones. Returns the checkpoint folder.
pub fn save(run_dir: &Path, model: &DiffusionModel, opt: &AdamW, state: &TrainState, keep: usize) -> Result<PathBuf, TrainError> {
    let dir = write(run_dir, &step_dir_name(state.step), model, opt, state)?;
    prune(&run_dir.join("checkpoints"), keep)?;
    Ok(dir)
}

/// Writes (replaces) the run's best checkpoint, `checkpoints/best`.
pub fn save_best(run_dir: &Path, model: &DiffusionModel, opt: &AdamW, state: &TrainState) -> Result<PathBuf, TrainError> {
    write(run_dir, BEST_DIR, model, opt, state)
}

/// Removes temporary folders left by a process that died while writing a checkpoint.
pub fn remove_stale_temporaries(run_dir: &Path) -> Result<(), TrainError> {
    let root = run_dir.join("checkpoints");
    let Ok(entries) = std::fs::read_dir(&root) else { return Ok(()) };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(".tmp-") {
            std::fs::remove_dir_all(entry.path()).map_err(|e| TrainError::io(entry.path(), e))?;
        }
    }
    Ok(())
}

fn write(run_dir: &Path, name: &str, model: &DiffusionModel, opt: &AdamW, state: &TrainState) -> Result<PathBuf, TrainError> {
    let root = run_dir.join("checkpoints");
    let to_cpu = |v: Vec<(String, tch::Tensor)>| -> Vec<(String, tch::Tensor)> { v.into_iter().map(|(n, t)| (n, t.to_device(Device::Cpu))).collect() };
    let tensors =
        CheckpointTensors { model: to_cpu(sorted_variables(&model.vs)), ema: to_cpu(sorted_variables(&model.ema_vs)), optimizer: to_cpu(opt.state()) };
    write_folder(&root.join(name), &tensors, state, &model.config)
}

/// What a checkpoint folder holds besides its state and config.
pub struct CheckpointTensors {
    pub model: Vec<(String, tch::Tensor)>,
    pub ema: Vec<(String, tch::Tensor)>,
    pub optimizer: Vec<(String, tch::Tensor)>,
}

/// Writes a complete checkpoint folder at `final_dir`: files into a temporary sibling, synced,
/// listed with their SHA-256 in the manifest, then the folder renamed into place.
pub fn write_folder(final_dir: &Path, tensors: &CheckpointTensors, state: &TrainState, config: &RunConfig) -> Result<PathBuf, TrainError> {
    let root = final_dir.parent().unwrap_or(Path::new(".")).to_path_buf();
    let name = final_dir.file_name().map_or("checkpoint".to_string(), |n| n.to_string_lossy().into_owned());
    std::fs::create_dir_all(&root).map_err(|e| TrainError::io(&root, e))?;
    let tmp = root.join(format!(".tmp-{name}-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    tch::Tensor::write_safetensors(&tensors.model, tmp.join(MODEL_FILE)).map_err(torch_err(&tmp))?;
    tch::Tensor::write_safetensors(&tensors.ema, tmp.join(EMA_FILE)).map_err(torch_err(&tmp))?;
    tch::Tensor::write_safetensors(&tensors.optimizer, tmp.join(OPTIMIZER_FILE)).map_err(torch_err(&tmp))?;
    let state_json = serde_json::to_vec_pretty(state).map_err(|e| TrainError::Other(e.to_string()))?;
    write_atomic(&tmp.join(STATE_FILE), &state_json).map_err(|e| TrainError::io(tmp.join(STATE_FILE), e))?;
    write_atomic(&tmp.join(CONFIG_FILE), config.to_toml().as_bytes()).map_err(|e| TrainError::io(tmp.join(CONFIG_FILE), e))?;

    let mut files = Vec::new();
    for name in [MODEL_FILE, EMA_FILE, OPTIMIZER_FILE, STATE_FILE, CONFIG_FILE] {
        let path = tmp.join(name);
        let file = std::fs::File::open(&path).map_err(|e| TrainError::io(&path, e))?;
        file.sync_all().map_err(|e| TrainError::io(&path, e))?;
        let size = file.metadata().map_err(|e| TrainError::io(&path, e))?.len();
        let sha256 = sha256_file(&path).map_err(|e| TrainError::io(&path, e))?;
        files.push(ManifestEntry { name: name.to_string(), size, sha256 });
    }
    let manifest = Manifest { format: 1, step: state.step, files };
    let bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| TrainError::Other(e.to_string()))?;
    write_atomic(&tmp.join(MANIFEST_FILE), &bytes).map_err(|e| TrainError::io(tmp.join(MANIFEST_FILE), e))?;

    if final_dir.exists() {
        // Move the old one aside first: a crash in between leaves a temporary, never a mix.
        let old = root.join(format!(".tmp-old-{name}-{}", std::process::id()));
        std::fs::rename(final_dir, &old).map_err(|e| TrainError::io(final_dir, e))?;
        std::fs::rename(&tmp, final_dir).map_err(|e| TrainError::io(final_dir, e))?;
        std::fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
    } else {
        std::fs::rename(&tmp, final_dir).map_err(|e| TrainError::io(final_dir, e))?;
    }
    difforge_core::atomic::sync_dir(&root).map_err(|e| TrainError::io(&root, e))?;
    Ok(final_dir.to_path_buf())
}

/// Removes all but the newest `keep` checkpoints, and stale temporary folders.
fn prune(root: &Path, keep: usize) -> Result<(), TrainError> {
    let list = list(root.parent().unwrap_or(root))?;
    for (_, dir) in list.iter().rev().skip(keep) {
        std::fs::remove_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    }
    Ok(())
}

/// The checkpoints of a run folder, oldest first.
pub fn list(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>, TrainError> {
    let root = run_dir.join("checkpoints");
    if !root.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&root).map_err(|e| TrainError::io(&root, e))? {
        let path = entry.map_err(|e| TrainError::io(&root, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse::<u64>().ok()) {
            out.push((step, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Checks every file of a checkpoint against its manifest.
pub fn verify(dir: &Path) -> Result<Manifest, TrainError> {
    let mpath = dir.join(MANIFEST_FILE);
    let text = std::fs::read(&mpath).map_err(|e| TrainError::checkpoint(dir, format!("no readable manifest ({e}): not a complete checkpoint")))?;
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| TrainError::checkpoint(&mpath, format!("corrupt manifest: {e}")))?;
    for f in &manifest.files {
        let path = dir.join(&f.name);
        let size = std::fs::metadata(&path).map_err(|e| TrainError::checkpoint(&path, format!("listed in the manifest but unreadable: {e}")))?.len();
        if size != f.size {
            return Err(TrainError::checkpoint(&path, format!("size {size} bytes, the manifest says {}", f.size)));
        }
        let sha = sha256_file(&path).map_err(|e| TrainError::io(&path, e))?;
        if sha != f.sha256 {
            return Err(TrainError::checkpoint(&path, format!("SHA-256 {sha} does not match the manifest ({}): the file is corrupt", f.sha256)));
        }
    }
    Ok(manifest)
}

/// Resolves `--checkpoint PATH`: a checkpoint folder, or a run folder (its best checkpoint if it
/// has a good one, else its newest checkpoint that verifies).
pub fn resolve(path: &Path) -> Result<PathBuf, TrainError> {
    if path.join(MANIFEST_FILE).exists() {
        verify(path)?;
        return Ok(path.to_path_buf());
    }
    let best = path.join("checkpoints").join(BEST_DIR);
    if best.is_dir() {
        match verify(&best) {
            Ok(_) => return Ok(best),
            Err(e) => tracing::warn!("refusing the best checkpoint: {e}; using the newest good one"),
        }
    }
    resolve_latest(path)
}

/// The newest checkpoint of a run folder that verifies; older good ones are used when newer
/// ones are corrupt, with a warning that names the refused one.
pub fn resolve_latest(path: &Path) -> Result<PathBuf, TrainError> {
    let all = list(path)?;
    if all.is_empty() {
        return Err(TrainError::checkpoint(path, "neither a checkpoint folder (no manifest.json) nor a run folder with checkpoints/step-*"));
    }
    for (_, dir) in all.iter().rev() {
        match verify(dir) {
            Ok(_) => return Ok(dir.clone()),
            Err(e) => eprintln!("warning: refusing checkpoint: {e}; trying an older one"),
        }
    }
    Err(TrainError::checkpoint(path, "no checkpoint in this run folder passes its manifest check"))
}

pub fn read_config(dir: &Path) -> Result<RunConfig, TrainError> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    RunConfig::from_toml(&text, &[], &path.display().to_string())
}

pub fn read_state(dir: &Path) -> Result<TrainState, TrainError> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
    serde_json::from_slice(&text).map_err(|e| TrainError::checkpoint(&path, e.to_string()))
}

/// Loads model and EMA weights of a verified checkpoint folder into a new model.
pub fn load_model(dir: &Path, config: &RunConfig, device: Device) -> Result<DiffusionModel, TrainError> {
    let mut model = DiffusionModel::new(config, device)?;
    restore_weights(dir, &mut model)?;
    Ok(model)
}

/// Overwrites a model's raw and EMA weights with a checkpoint's.
pub fn restore_weights(dir: &Path, model: &mut DiffusionModel) -> Result<(), TrainError> {
    difforge_nn::weights::load(&mut model.vs, &dir.join(MODEL_FILE))?;
    difforge_nn::weights::load(&mut model.ema_vs, &dir.join(EMA_FILE))?;
    Ok(())
}

/// Restores the optimiser moments of a checkpoint.
pub fn load_optimizer(dir: &Path, opt: &mut AdamW, steps: u64, device: Device) -> Result<(), TrainError> {
    let path = dir.join(OPTIMIZER_FILE);
    let named = tch::Tensor::read_safetensors(&path).map_err(torch_err(&path))?;
    let named = named.into_iter().map(|(n, t)| (n, t.to_device(device))).collect();
    opt.load_state(&named, steps).map_err(|e| TrainError::checkpoint(&path, e))
}

/// Starts `model` from a trained checkpoint's EMA weights (raw and EMA alike). Adapter variables
/// keep their fresh initialisation; a class embedding that grew keeps the old rows, moves the
/// null row to its new place and starts new classes at the mean of the old ones.
pub fn init_from(dir: &Path, model: &mut DiffusionModel) -> Result<(), TrainError> {
    let path = dir.join(EMA_FILE);
    let base: std::collections::HashMap<String, tch::Tensor> = tch::Tensor::read_safetensors(&path).map_err(torch_err(&path))?.into_iter().collect();
    for vs in [&model.vs, &model.ema_vs] {
        for (name, var) in sorted_variables(vs) {
            if difforge_nn::lora::is_lora_variable(&name) {
                continue;
            }
            let src = base.get(&name).ok_or_else(|| TrainError::checkpoint(&path, format!("tensor `{name}` is missing from the base")))?;
            let src = src.to_device(var.device());
            let value = if name == "class_embedding.weight" && src.size() != var.size() {
                grow_class_embedding(&src, &var, &path)?
            } else if src.size() != var.size() {
                return Err(TrainError::checkpoint(
                    &path,
                    format!("tensor `{name}` has shape {:?} in the base, the model expects {:?}", src.size(), var.size()),
                ));
            } else {
                src
            };
            tch::no_grad(|| var.shallow_clone().copy_(&value));
        }
    }
    Ok(())
}

fn grow_class_embedding(src: &tch::Tensor, var: &tch::Tensor, path: &Path) -> Result<tch::Tensor, TrainError> {
    let (old_rows, new_rows) = (src.size()[0], var.size()[0]);
    if new_rows < old_rows || src.size()[1] != var.size()[1] {
        return Err(TrainError::checkpoint(
            path,
            format!("the base has {} classes, the fine-tune {}: classes can be added, not removed", old_rows - 1, new_rows - 1),
        ));
    }
    let (k_old, k_new) = (old_rows - 1, new_rows - 1);
    let old_classes = src.narrow(0, 0, k_old);
    let mean = old_classes.mean_dim([0i64].as_slice(), true, tch::Kind::Float);
    let added = mean.expand([k_new - k_old, src.size()[1]], false);
    Ok(tch::Tensor::cat(&[old_classes, added, src.narrow(0, k_old, 1)], 0))
}
