//! LoRA adapter files: safetensors holding only the adapter tensors (the EMA ones, which
//! sampling uses), with metadata naming the base checkpoint by the SHA-256 of its manifest, the
//! LoRA config and the adapted model's `[model]` section (a fine-tune may have added classes).
//! An adapter is refused on any other base.

use crate::checkpoint::{self, MANIFEST_FILE};
use crate::error::ModelError;
use crate::model::{DiffusionModel, Weights};
use difforge_config::{apply_set, RunConfig};
use difforge_nn::lora::{is_lora_variable, merged_delta};
use difforge_nn::LoraConfig;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Tensor};

/// The metadata key under which difforge keeps [`AdapterMeta`] as JSON.
const METADATA_KEY: &str = "difforge";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterMeta {
    pub format: String,
    /// SHA-256 of the base checkpoint's manifest.json.
    pub base_sha256: String,
    pub lora: LoraConfig,
    /// The adapted model's `[model]` section as TOML (format 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The class count of format-1 files (before model families), read for compatibility.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<i64>,
}

pub const FORMAT: &str = "difforge-lora-2";
const FORMAT_1: &str = "difforge-lora-1";

/// The identity of a checkpoint folder: the SHA-256 of its manifest.
pub fn checkpoint_hash(dir: &Path) -> Result<String, ModelError> {
    let bytes = std::fs::read(dir.join(MANIFEST_FILE)).map_err(|e| ModelError::io(dir.join(MANIFEST_FILE), e))?;
    Ok(difforge_core::sha256_hex(&bytes))
}

/// The metadata of an adapter file.
pub fn read_meta(path: &Path) -> Result<AdapterMeta, ModelError> {
    let bad = |reason: String| ModelError::checkpoint(path, reason);
    let metadata = difforge_nn::weights::read_metadata(path)?;
    let text = metadata.get(METADATA_KEY).ok_or_else(|| bad("no difforge metadata: not a difforge LoRA adapter".into()))?;
    let m: AdapterMeta = serde_json::from_str(text).map_err(|e| bad(format!("bad metadata: {e}")))?;
    if m.format != FORMAT && m.format != FORMAT_1 {
        return Err(bad(format!("format {:?}, expected {FORMAT:?}", m.format)));
    }
    Ok(m)
}

/// Saves the EMA adapter tensors of `model`, recording the base checkpoint.
pub fn save(path: &Path, model: &DiffusionModel, base_dir: &Path) -> Result<AdapterMeta, ModelError> {
    let lora = model.config().lora.clone().ok_or_else(|| ModelError::Other("the model has no [lora] adapters".into()))?;
    let section = toml::to_string(&model.config().model).map_err(|e| ModelError::Other(e.to_string()))?;
    let meta = AdapterMeta { format: FORMAT.into(), base_sha256: checkpoint_hash(base_dir)?, lora, model: Some(section), num_classes: None };
    let tensors: Vec<(String, Tensor)> = model.variables(Weights::Ema).into_iter().filter(|(n, _)| model.family().adapter_carries(&meta.lora, n)).collect();
    let mut metadata = HashMap::new();
    metadata.insert(METADATA_KEY.to_string(), serde_json::to_string(&meta).map_err(|e| ModelError::Other(e.to_string()))?);
    difforge_nn::weights::save_with_metadata(path, &tensors, &metadata)?;
    Ok(meta)
}

/// Checks that an adapter was trained on the base checkpoint `base_dir`.
pub fn check_base(path: &Path, meta: &AdapterMeta, base_dir: &Path) -> Result<(), ModelError> {
    let hash = checkpoint_hash(base_dir)?;
    if hash != meta.base_sha256 {
        return Err(ModelError::checkpoint(
            path,
            format!("this adapter was trained on the base checkpoint with manifest SHA-256 {}, not on {} ({hash})", meta.base_sha256, base_dir.display()),
        ));
    }
    Ok(())
}

/// The adapted model's config: the base's, with the adapter's `[model]` section (checked like
/// any config), its LoRA settings and the base as `finetune.from`.
fn adapted_config(base: &RunConfig, meta: &AdapterMeta, adapter: &Path, base_dir: &Path) -> Result<RunConfig, ModelError> {
    let bad = |e: difforge_core::ConfigError| ModelError::checkpoint(adapter, format!("the adapter's model settings are invalid: {e}"));
    let mut table: toml::Table = base.to_toml().parse().map_err(|e: toml::de::Error| ModelError::Other(e.to_string()))?;
    match (&meta.model, meta.num_classes) {
        (Some(section), _) => {
            let model: toml::Table = section.parse().map_err(|e: toml::de::Error| ModelError::checkpoint(adapter, format!("bad [model] metadata: {e}")))?;
            table.insert("model".into(), toml::Value::Table(model));
        }
        (None, Some(k)) => apply_set(&mut table, &format!("model.num_classes={k}")).map_err(bad)?,
        (None, None) => {}
    }
    let mut cfg = RunConfig::from_toml(&toml::to_string(&table).map_err(|e| ModelError::Other(e.to_string()))?, &[], "the adapter's model").map_err(bad)?;
    if cfg.model.family() != base.model.family() {
        return Err(ModelError::checkpoint(adapter, format!("the adapter is for a {} model, the base is a {} model", cfg.model.family(), base.model.family())));
    }
    cfg.lora = Some(meta.lora.clone());
    cfg.finetune.from = Some(base_dir.to_path_buf());
    cfg.validate().map_err(bad)?;
    Ok(cfg)
}

/// A base checkpoint with an unmerged adapter at `scale`.
pub fn load_with_adapter(base: &Path, adapter: &Path, scale: f64, device: Device) -> Result<DiffusionModel, ModelError> {
    let dir = checkpoint::resolve(base)?;
    let meta = read_meta(adapter)?;
    check_base(adapter, &meta, &dir)?;
    let cfg = adapted_config(&checkpoint::read_config(&dir)?, &meta, adapter, &dir)?;
    let mut model = DiffusionModel::with_lora_scale(&cfg, device, scale)?;
    checkpoint::init_from(&dir, &mut model)?;
    let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(adapter).map_err(|e| ModelError::checkpoint(adapter, e.to_string()))?.into_iter().collect();
    for w in [Weights::Raw, Weights::Ema] {
        for (name, var) in model.variables(w).into_iter().filter(|(n, _)| model.family().adapter_carries(&meta.lora, n)) {
            let src = tensors.get(&name).ok_or_else(|| ModelError::checkpoint(adapter, format!("adapter tensor `{name}` is missing")))?;
            if src.size() != var.size() || src.kind() != var.kind() {
                return Err(ModelError::checkpoint(
                    adapter,
                    format!("adapter tensor `{name}` is {:?} {:?}, expected {:?} {:?}", src.kind(), src.size(), var.kind(), var.size()),
                ));
            }
            tch::no_grad(|| var.shallow_clone().copy_(src));
        }
    }
    Ok(model)
}

/// The base weights with the adapter folded in (W + scale * alpha / rank * up @ down), named as
/// the base model's variables.
pub fn merged_weights(model: &DiffusionModel, scale: f64) -> Result<Vec<(String, Tensor)>, ModelError> {
    let lora = model.config().lora.as_ref().ok_or_else(|| ModelError::Other("no [lora] adapters to merge".into()))?;
    let factor = scale * lora.alpha / lora.rank as f64;
    let vars: HashMap<String, Tensor> = model.variables(Weights::Ema).into_iter().collect();
    let mut out = Vec::new();
    for (name, t) in model.variables(Weights::Ema) {
        if is_lora_variable(&name) {
            continue;
        }
        let layer = name.strip_suffix(".weight").unwrap_or("");
        let merged = match (vars.get(&format!("{layer}.lora_down.weight")), vars.get(&format!("{layer}.lora_up.weight"))) {
            (Some(down), Some(up)) => tch::no_grad(|| &t + merged_delta(down, up, factor)),
            _ => t.copy(),
        };
        out.push((name, merged));
    }
    Ok(out)
}
