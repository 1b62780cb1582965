//! A checkpoint loaded for serving: the model, what /v1/models says about it, and the training
//! data's pixel statistics that output drift is measured against.

use crate::drift::Reference;
use crate::request::SizeRule;
use difforge_config::stable_diffusion::is_single_file;
use difforge_model::generate::classes_in_turn;
use difforge_model::stable_diffusion::is_diffusers_folder;
use difforge_model::stable_diffusion::lora_merge::{merge_into_base, MergedLayout};
use difforge_model::stable_diffusion::single_file_base::folder_of;
use difforge_model::{checkpoint, generate, ConditionKind, DiffusionModel, GenerateSpec, RunConfig, Weights};
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::Device;

#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub checkpoint: PathBuf,
    /// The LoRA adapter applied (unmerged) and its scale, if any.
    pub adapter: Option<(PathBuf, f64)>,
    /// SHA-256 of the checkpoint's manifest (which lists the SHA-256 of every file).
    pub checkpoint_hash: String,
    pub step: u64,
    pub parameters: i64,
    pub image_size: i64,
    /// Other sizes the model generates are multiples of this (null: only `image_size`).
    pub size_multiple: Option<i64>,
    pub channels: i64,
    pub classes: Vec<String>,
    /// What a request names: "text" (a `prompt`), "classes" (a `class`) or "nothing".
    pub conditioning: &'static str,
    /// The same, for checking requests.
    #[serde(skip)]
    pub kind: ConditionKind,
    pub defaults: difforge_diffusion::SamplerConfig,
    pub timesteps: usize,
    pub device: String,
    pub config: RunConfig,
}

pub struct Loaded {
    pub model: DiffusionModel,
    pub info: ModelInfo,
    pub reference: Option<Reference>,
    /// Whether the model has training data (in its config) that outputs can be compared with:
    /// a published folder served as it is has none.
    pub training_data: bool,
    /// The merged copy of a published model served with a LoRA file, kept while it is served.
    _merged: Option<tempfile::TempDir>,
}

impl ModelInfo {
    /// The image sizes requests may ask this model for.
    pub fn size_rule(&self, max_side: i64) -> SizeRule {
        SizeRule { own: [self.image_size, self.image_size], multiple: self.size_multiple, max_side }
    }

    /// What a user key may see: no paths on the server's disk.
    pub fn without_paths(&self) -> ModelInfo {
        let mut info = self.clone();
        info.checkpoint = info.checkpoint.file_name().map(PathBuf::from).unwrap_or_default();
        info.adapter = info.adapter.map(|(p, s)| (p.file_name().map(PathBuf::from).unwrap_or_default(), s));
        info.config = info.config.without_paths();
        info
    }
}

/// Class names of a class-conditional model, from its dataset's config when it names them.
fn class_names(model: &DiffusionModel) -> Vec<String> {
    let cfg = model.config();
    let k = model.family().condition_kind().classes().unwrap_or(0) as usize;
    if !cfg.data.class_names.is_empty() {
        return cfg.data.class_names.iter().take(k).cloned().collect();
    }
    (0..k).map(|c| c.to_string()).collect()
}

/// An adapter to apply, unmerged, on top of the served checkpoint.
#[derive(Debug, Clone)]
pub struct AdapterChoice {
    pub path: PathBuf,
    pub scale: f64,
}

/// Loads and verifies a checkpoint (or a run folder's best/newest), with an optional LoRA
/// adapter, or a published diffusers Stable Diffusion folder as it is; then warms it up with one
/// small generation so the first request does not pay for lazy initialisation.
pub fn load(path: &Path, adapter: Option<&AdapterChoice>, device: Device) -> Result<Loaded, String> {
    if is_diffusers_folder(path) || (path.is_file() && is_single_file(path)) {
        return load_published(path, adapter, device);
    }
    let dir = checkpoint::resolve(path).map_err(|e| e.to_string())?;
    let state = checkpoint::read_state(&dir).map_err(|e| e.to_string())?;
    let model = match adapter {
        Some(a) => difforge_model::adapter::load_with_adapter(&dir, &a.path, a.scale, device).map_err(|e| e.to_string())?,
        None => {
            let cfg = checkpoint::read_config(&dir).map_err(|e| e.to_string())?;
            checkpoint::load_model(&dir, &cfg, device).map_err(|e| e.to_string())?
        }
    };
    let manifest = std::fs::read(dir.join(checkpoint::MANIFEST_FILE)).map_err(|e| e.to_string())?;
    warm_up(&model)?;
    let reference = crate::drift::reference(&state, &model.config().data, model.config().seed);
    let info = ModelInfo {
        adapter: adapter.map(|a| (a.path.clone(), a.scale)),
        checkpoint_hash: difforge_core::sha256_hex(&manifest),
        step: state.step,
        ..describe(&model, dir, device)
    };
    Ok(Loaded { model, info, reference, training_data: true, _merged: None })
}

/// A published Stable Diffusion model served as it is (its scheduler's sampler and diffusers'
/// defaults): a diffusers folder, or a single file (its cached conversion, as a run's
/// `model.base`), with a LoRA file merged in when `adapter` names one; identified by its UNet
/// weights' fingerprint, with no training data to measure drift against.
fn load_published(path: &Path, adapter: Option<&AdapterChoice>, device: Device) -> Result<Loaded, String> {
    let mut folder = folder_of(path, None).map_err(|e| e.to_string())?;
    let merged = match adapter {
        Some(a) => {
            let dir = merge_adapter(&folder, a)?;
            folder = dir.path().join("merged");
            Some(dir)
        }
        None => None,
    };
    let cfg = difforge_model::stable_diffusion::published::run_config(&folder).map_err(|e| e.to_string())?;
    let model = DiffusionModel::for_generation(&cfg, device).map_err(|e| e.to_string())?;
    let fingerprint = model.family().base_fingerprint().map_err(|e| e.to_string())?.unwrap_or_default();
    warm_up(&model)?;
    let info = ModelInfo { checkpoint_hash: fingerprint, adapter: adapter.map(|a| (a.path.clone(), a.scale)), ..describe(&model, path.to_path_buf(), device) };
    Ok(Loaded { model, info, reference: None, training_data: false, _merged: merged })
}

/// The LoRA file merged into a copy of `folder` (as `difforge lora merge` writes it) in a
/// temporary folder beside difforge's cache, removed when the loaded model goes. The model's
/// own loading then needs no LoRA path of its own; the copy costs the model's size on disk.
fn merge_adapter(folder: &Path, adapter: &AdapterChoice) -> Result<tempfile::TempDir, String> {
    let root = std::env::var_os("DIFFORGE_CACHE_DIR")
        .map_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/difforge"), PathBuf::from);
    std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    let dir = tempfile::Builder::new().prefix("served-lora-").tempdir_in(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    let out = dir.path().join("merged");
    let report =
        merge_into_base(folder, &adapter.path, adapter.scale, &out, MergedLayout::Folder).map_err(|e| format!("--lora {}: {e}", adapter.path.display()))?;
    tracing::info!("serving {} with the LoRA {report} merged", folder.display());
    Ok(dir)
}

/// One one-step image, so that the first request does not pay for lazy initialisation.
fn warm_up(model: &DiffusionModel) -> Result<(), String> {
    let mut warm = model.config().sample.clone();
    warm.steps = 1;
    let conditions = classes_in_turn(model.family().condition_kind(), 1);
    let spec =
        GenerateSpec { conditions, seeds: vec![0], sampler: &warm, weights: Weights::Ema, max_batch: 1, fixed_batch: false, negatives: Vec::new(), size: None };
    generate(model, &spec).map(|_| ()).map_err(|e| e.to_string())
}

/// What /v1/models says about `model`, loaded from `checkpoint` (no adapter, step 0, no hash).
fn describe(model: &DiffusionModel, checkpoint: PathBuf, device: Device) -> ModelInfo {
    let cfg = model.config();
    let kind = model.family().condition_kind();
    ModelInfo {
        checkpoint,
        adapter: None,
        checkpoint_hash: String::new(),
        step: 0,
        parameters: model.parameter_count(),
        image_size: model.family().pixel_shape()[1],
        size_multiple: model.family().size_multiple(),
        channels: model.family().pixel_shape()[0],
        classes: class_names(model),
        conditioning: match kind {
            ConditionKind::Text => "text",
            ConditionKind::Classes(_) => "classes",
            ConditionKind::Nothing => "nothing",
        },
        kind,
        defaults: cfg.sample.clone(),
        timesteps: cfg.diffusion.timesteps,
        device: format!("{device:?}").to_lowercase(),
        config: cfg.clone(),
    }
}
