//! The checkpoint format: a folder with the raw and EMA weights, the optimiser state, the
//! training state and the run config (safetensors, JSON, TOML), and a manifest listing every
//! file's size and SHA-256. A folder is written under a temporary name, synced and renamed, so a
//! checkpoint either exists whole or not at all; one whose files do not match its manifest is
//! refused.

use crate::error::ModelError;
use crate::model::{DiffusionModel, Weights};
use difforge_config::RunConfig;
use difforge_core::{sha256_file, write_atomic};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

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
    /// Pixel statistics of the training images, kept so that a server can watch its outputs
    /// drift without reading the training data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_pixels: Option<PixelStats>,
    /// The fingerprint of the published base the run trains on (`Family::base_fingerprint`),
    /// so that a checkpoint which holds only adapters is never loaded onto another base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_fingerprint: Option<String>,
}

/// Mean and standard deviation of pixel values on the [-1, 1] scale.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PixelStats {
    pub mean: f64,
    pub std: f64,
}

impl PixelStats {
    /// The statistics of the images at `indices` of `set` (None when there are no pixels).
    pub fn of(set: &difforge_data::ImageSet, indices: &[usize]) -> Option<PixelStats> {
        let (mut sum, mut sq, mut n) = (0f64, 0f64, 0f64);
        for &i in indices {
            for &v in &set.pixels[i].data {
                let x = f64::from(v) / 127.5 - 1.0;
                sum += x;
                sq += x * x;
                n += 1.0;
            }
        }
        (n > 0.0).then(|| {
            let mean = sum / n;
            PixelStats { mean, std: (sq / n - mean * mean).max(1e-12).sqrt() }
        })
    }
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
            data_pixels: None,
            base_fingerprint: None,
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

pub fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

fn torch_err(path: &Path) -> impl Fn(tch::TchError) -> ModelError + '_ {
    move |e| ModelError::checkpoint(path, e.to_string())
}

/// Writes a checkpoint of `model`, the optimiser's named state and `state` under
/// `run_dir/checkpoints/`, then keeps only the newest `keep` ones. Returns the checkpoint folder.
pub fn save(run_dir: &Path, model: &DiffusionModel, optimizer: Vec<(String, Tensor)>, state: &TrainState, keep: usize) -> Result<PathBuf, ModelError> {
    let dir = write(run_dir, &step_dir_name(state.step), model, optimizer, state)?;
    prune(&run_dir.join("checkpoints"), keep)?;
    Ok(dir)
}

/// Writes (replaces) the run's best checkpoint, `checkpoints/best`.
pub fn save_best(run_dir: &Path, model: &DiffusionModel, optimizer: Vec<(String, Tensor)>, state: &TrainState) -> Result<PathBuf, ModelError> {
    write(run_dir, BEST_DIR, model, optimizer, state)
}

/// A checkpoint being written: `.tmp-NAME-PID`.
const TMP_PREFIX: &str = ".tmp-";
/// The checkpoint it replaces, moved aside: `.tmp-old-NAME-PID`.
const TMP_OLD_PREFIX: &str = ".tmp-old-";

/// (checkpoint name, whether it is the old copy moved aside) of a temporary folder's name.
fn temporary_of(file_name: &str) -> Option<(String, bool)> {
    let (rest, old) = match file_name.strip_prefix(TMP_OLD_PREFIX) {
        Some(rest) => (rest, true),
        None => (file_name.strip_prefix(TMP_PREFIX)?, false),
    };
    let (name, pid) = rest.rsplit_once('-')?;
    pid.parse::<u32>().ok().map(|_| (name.to_string(), old))
}

/// Cleans up after a process that died while writing a checkpoint. Temporaries of a checkpoint
/// that exists are deleted. When the checkpoint itself is missing (the process died between
/// moving the old copy aside and moving the new one in), the new copy is put in place if it is
/// complete, else the old one, and only then are the rest deleted: a complete checkpoint is
/// never thrown away.
pub fn recover_temporaries(run_dir: &Path) -> Result<(), ModelError> {
    let root = run_dir.join("checkpoints");
    let Ok(entries) = std::fs::read_dir(&root) else { return Ok(()) };
    let mut by_name: std::collections::BTreeMap<String, Vec<(bool, PathBuf)>> = Default::default();
    for entry in entries.flatten() {
        if let Some((name, old)) = temporary_of(&entry.file_name().to_string_lossy()) {
            by_name.entry(name).or_default().push((old, entry.path()));
        }
    }
    for (name, mut temps) in by_name {
        let target = root.join(&name);
        if !target.exists() {
            // The new copy first (it is newer), then the old one.
            temps.sort_by_key(|(old, _)| *old);
            if let Some((_, good)) = temps.iter().find(|(_, dir)| verify(dir).is_ok()) {
                std::fs::rename(good, &target).map_err(|e| ModelError::io(&target, e))?;
                tracing::warn!("restored checkpoint {} from {} (an earlier run stopped while replacing it)", target.display(), good.display());
            }
        }
        for (_, dir) in temps.iter().filter(|(_, dir)| dir.exists()) {
            std::fs::remove_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        }
    }
    difforge_core::atomic::sync_dir(&root).map_err(|e| ModelError::io(&root, e))?;
    Ok(())
}

fn write(run_dir: &Path, name: &str, model: &DiffusionModel, optimizer: Vec<(String, Tensor)>, state: &TrainState) -> Result<PathBuf, ModelError> {
    let root = run_dir.join("checkpoints");
    let to_cpu = |v: Vec<(String, Tensor)>| -> Vec<(String, Tensor)> { v.into_iter().map(|(n, t)| (n, t.to_device(Device::Cpu))).collect() };
    let tensors = CheckpointTensors {
        model: to_cpu(model.checkpointed_variables(Weights::Raw)),
        ema: to_cpu(model.checkpointed_variables(Weights::Ema)),
        optimizer: to_cpu(optimizer),
    };
    write_folder(&root.join(name), &tensors, state, model.config())
}

/// What a checkpoint folder holds besides its state and config.
pub struct CheckpointTensors {
    pub model: Vec<(String, tch::Tensor)>,
    pub ema: Vec<(String, tch::Tensor)>,
    pub optimizer: Vec<(String, tch::Tensor)>,
}

/// Writes a complete checkpoint folder at `final_dir`: files into a temporary sibling, synced,
/// listed with their SHA-256 in the manifest, then the folder renamed into place.
pub fn write_folder(final_dir: &Path, tensors: &CheckpointTensors, state: &TrainState, config: &RunConfig) -> Result<PathBuf, ModelError> {
    let state_json = serde_json::to_vec_pretty(state).map_err(|e| ModelError::Other(e.to_string()))?;
    let files = [
        CheckpointFile::Tensors(MODEL_FILE, &tensors.model),
        CheckpointFile::Tensors(EMA_FILE, &tensors.ema),
        CheckpointFile::Tensors(OPTIMIZER_FILE, &tensors.optimizer),
        CheckpointFile::Bytes(STATE_FILE, state_json),
        CheckpointFile::Bytes(CONFIG_FILE, config.to_toml().into_bytes()),
    ];
    write_checkpoint_folder(final_dir, &files, state.step)
}

/// One file of a checkpoint folder: tensors (written as safetensors) or bytes.
pub enum CheckpointFile<'a> {
    Tensors(&'a str, &'a [(String, tch::Tensor)]),
    Bytes(&'a str, Vec<u8>),
}

impl CheckpointFile<'_> {
    fn name(&self) -> &str {
        match self {
            CheckpointFile::Tensors(name, _) | CheckpointFile::Bytes(name, _) => name,
        }
    }
}

/// Writes a complete checkpoint folder of any trainer (the diffusion trainer's, the VAE's): the
/// files into a temporary sibling, synced, listed with their SHA-256 in the manifest, then the
/// folder renamed into place, so that `list`, `verify`, `prune` and `recover_temporaries` serve
/// every kind of run.
pub fn write_checkpoint_folder(final_dir: &Path, files: &[CheckpointFile], step: u64) -> Result<PathBuf, ModelError> {
    let root = final_dir.parent().unwrap_or(Path::new(".")).to_path_buf();
    let name = final_dir.file_name().map_or("checkpoint".to_string(), |n| n.to_string_lossy().into_owned());
    std::fs::create_dir_all(&root).map_err(|e| ModelError::io(&root, e))?;
    let tmp = root.join(format!("{TMP_PREFIX}{name}-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    }
    if let Err(e) = write_files(&tmp, files, step) {
        // A full disk (or any failure) must not leave a half-written folder taking its space.
        if let Err(cleanup) = std::fs::remove_dir_all(&tmp) {
            tracing::warn!("could not remove the partial checkpoint {}: {cleanup}", tmp.display());
        }
        return Err(e);
    }
    if final_dir.exists() {
        // Move the old one aside first: a crash in between leaves complete temporaries that
        // `recover_temporaries` puts back, never a mix.
        let old = root.join(format!("{TMP_OLD_PREFIX}{name}-{}", std::process::id()));
        std::fs::rename(final_dir, &old).map_err(|e| ModelError::io(final_dir, e))?;
        std::fs::rename(&tmp, final_dir).map_err(|e| ModelError::io(final_dir, e))?;
        std::fs::remove_dir_all(&old).map_err(|e| ModelError::io(&old, e))?;
    } else {
        std::fs::rename(&tmp, final_dir).map_err(|e| ModelError::io(final_dir, e))?;
    }
    difforge_core::atomic::sync_dir(&root).map_err(|e| ModelError::io(&root, e))?;
    Ok(final_dir.to_path_buf())
}

/// Writes every file of a checkpoint into `dir` (synced), the manifest last.
fn write_files(dir: &Path, entries: &[CheckpointFile], step: u64) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = dir.join(entry.name());
        match entry {
            CheckpointFile::Tensors(_, tensors) => tch::Tensor::write_safetensors(tensors, &path).map_err(torch_err(dir))?,
            CheckpointFile::Bytes(_, bytes) => write_atomic(&path, bytes).map_err(|e| ModelError::io(&path, e))?,
        }
        let file = std::fs::File::open(&path).map_err(|e| ModelError::io(&path, e))?;
        file.sync_all().map_err(|e| ModelError::io(&path, e))?;
        let size = file.metadata().map_err(|e| ModelError::io(&path, e))?.len();
        let sha256 = sha256_file(&path).map_err(|e| ModelError::io(&path, e))?;
        files.push(ManifestEntry { name: entry.name().to_string(), size, sha256 });
    }
    let manifest = Manifest { format: 1, step, files };
    let bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| ModelError::Other(e.to_string()))?;
    write_atomic(&dir.join(MANIFEST_FILE), &bytes).map_err(|e| ModelError::io(dir.join(MANIFEST_FILE), e))
}

/// Removes all but the newest `keep` checkpoints, and stale temporary folders.
pub fn prune(root: &Path, keep: usize) -> Result<(), ModelError> {
    let list = list(root.parent().unwrap_or(root))?;
    for (_, dir) in list.iter().rev().skip(keep) {
        std::fs::remove_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    }
    Ok(())
}

/// The checkpoints of a run folder, oldest first.
pub fn list(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>, ModelError> {
    let root = run_dir.join("checkpoints");
    if !root.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&root).map_err(|e| ModelError::io(&root, e))? {
        let path = entry.map_err(|e| ModelError::io(&root, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse::<u64>().ok()) {
            out.push((step, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Checks every file of a checkpoint against its manifest.
pub fn verify(dir: &Path) -> Result<Manifest, ModelError> {
    let mpath = dir.join(MANIFEST_FILE);
    let text = std::fs::read(&mpath).map_err(|e| ModelError::checkpoint(dir, format!("no readable manifest ({e}): not a complete checkpoint")))?;
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| ModelError::checkpoint(&mpath, format!("corrupt manifest: {e}")))?;
    for f in &manifest.files {
        let path = dir.join(&f.name);
        let size = std::fs::metadata(&path).map_err(|e| ModelError::checkpoint(&path, format!("listed in the manifest but unreadable: {e}")))?.len();
        if size != f.size {
            return Err(ModelError::checkpoint(&path, format!("size {size} bytes, the manifest says {}", f.size)));
        }
        let sha = sha256_file(&path).map_err(|e| ModelError::io(&path, e))?;
        if sha != f.sha256 {
            return Err(ModelError::checkpoint(&path, format!("SHA-256 {sha} does not match the manifest ({}): the file is corrupt", f.sha256)));
        }
    }
    Ok(manifest)
}

/// Resolves `--checkpoint PATH`: a checkpoint folder, or a run folder (its best checkpoint if it
/// has a good one, else its newest checkpoint that verifies).
pub fn resolve(path: &Path) -> Result<PathBuf, ModelError> {
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
pub fn resolve_latest(path: &Path) -> Result<PathBuf, ModelError> {
    let all = list(path)?;
    if all.is_empty() {
        if let Some(what) = crate::stable_diffusion::pipeline::unsupported_pipeline(path) {
            return Err(ModelError::checkpoint(path, what));
        }
        return Err(ModelError::checkpoint(path, "neither a checkpoint folder (no manifest.json) nor a run folder with checkpoints/step-*"));
    }
    for (_, dir) in all.iter().rev() {
        match verify(dir) {
            Ok(_) => return Ok(dir.clone()),
            Err(e) => tracing::warn!("refusing checkpoint: {e}; trying an older one"),
        }
    }
    Err(ModelError::checkpoint(path, "no checkpoint in this run folder passes its manifest check"))
}

pub fn read_config(dir: &Path) -> Result<RunConfig, ModelError> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    RunConfig::from_toml(&text, &[], &path.display().to_string()).map_err(|e| ModelError::checkpoint(&path, e.to_string()))
}

pub fn read_state(dir: &Path) -> Result<TrainState, ModelError> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read(&path).map_err(|e| ModelError::io(&path, e))?;
    serde_json::from_slice(&text).map_err(|e| ModelError::checkpoint(&path, e.to_string()))
}

/// Loads model and EMA weights of a verified checkpoint folder into a new model.
pub fn load_model(dir: &Path, config: &RunConfig, device: Device) -> Result<DiffusionModel, ModelError> {
    let mut model = DiffusionModel::new(config, device)?;
    check_base(dir, &model)?;
    restore_weights(dir, &mut model)?;
    Ok(model)
}

/// Refuses a checkpoint trained on another version of the model's published base.
fn check_base(dir: &Path, model: &DiffusionModel) -> Result<(), ModelError> {
    let Some(trained_on) = read_state(dir)?.base_fingerprint else { return Ok(()) };
    let now = model.family().base_fingerprint()?;
    if now.as_deref() != Some(trained_on.as_str()) {
        let base = model.family().base_folder().map_or_else(|| "(none)".into(), |b| b.display().to_string());
        return Err(ModelError::checkpoint(
            dir,
            format!("was trained on another base than {base} (its UNet weights differ): point model.base at the folder it was trained on"),
        ));
    }
    Ok(())
}

/// Overwrites a model's raw and EMA weights with a checkpoint's (those its checkpoints hold).
pub fn restore_weights(dir: &Path, model: &mut DiffusionModel) -> Result<(), ModelError> {
    for (w, file) in [(Weights::Raw, MODEL_FILE), (Weights::Ema, EMA_FILE)] {
        let held: std::collections::HashSet<String> = model.checkpointed_variables(w).into_iter().map(|(n, _)| n).collect();
        difforge_nn::weights::load_only(model.var_store_mut(w), &dir.join(file), |n| held.contains(n))?;
    }
    Ok(())
}

/// The named tensors of one file of a checkpoint (e.g. [`OPTIMIZER_FILE`]), on `device`.
pub fn read_tensors(dir: &Path, file: &str, device: Device) -> Result<std::collections::HashMap<String, Tensor>, ModelError> {
    let path = dir.join(file);
    let named = Tensor::read_safetensors(&path).map_err(torch_err(&path))?;
    Ok(named.into_iter().map(|(n, t)| (n, t.to_device(device))).collect())
}

/// Starts `model` from a trained checkpoint's EMA weights (raw and EMA alike). Adapter variables
/// keep their fresh initialisation; the family decides how a base tensor of another shape grows
/// (new classes) or is refused.
pub fn init_from(dir: &Path, model: &mut DiffusionModel) -> Result<(), ModelError> {
    let path = dir.join(EMA_FILE);
    let base = read_tensors(dir, EMA_FILE, Device::Cpu)?;
    for w in [Weights::Raw, Weights::Ema] {
        for (name, var) in model.variables(w) {
            if difforge_nn::lora::is_lora_variable(&name) {
                continue;
            }
            let src = base.get(&name).ok_or_else(|| ModelError::checkpoint(&path, format!("tensor `{name}` is missing from the base")))?;
            let value = model.family().start_from_base(&name, &src.to_device(var.device()), &var, &path)?;
            tch::no_grad(|| var.shallow_clone().copy_(&value));
        }
    }
    Ok(())
}
