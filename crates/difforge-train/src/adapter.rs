//! LoRA adapter files: safetensors holding only the adapter tensors (the EMA ones, which
//! sampling uses), with metadata naming the base checkpoint by the SHA-256 of its manifest, the
//! LoRA config and the classes. An adapter is refused on any other base.

use crate::checkpoint::{self, MANIFEST_FILE};
use crate::error::TrainError;
use crate::model::{sorted_variables, DiffusionModel};
use difforge_nn::lora::{is_lora_variable, merged_delta};
use difforge_nn::LoraConfig;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterMeta {
    pub format: String,
    /// SHA-256 of the base checkpoint's manifest.json.
    pub base_sha256: String,
    pub lora: LoraConfig,
    pub num_classes: i64,
}

pub const FORMAT: &str = "difforge-lora-1";

/// The identity of a checkpoint folder: the SHA-256 of its manifest.
pub fn checkpoint_hash(dir: &Path) -> Result<String, TrainError> {
    let bytes = std::fs::read(dir.join(MANIFEST_FILE)).map_err(|e| TrainError::io(dir.join(MANIFEST_FILE), e))?;
    Ok(difforge_core::sha256_hex(&bytes))
}

/// Writes float32 tensors as safetensors with string metadata (tch's writer has none).
fn write_safetensors(path: &Path, tensors: &[(String, Tensor)], metadata: &BTreeMap<String, String>) -> Result<(), TrainError> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::to_value(metadata).map_err(|e| TrainError::Other(e.to_string()))?);
    let mut data = Vec::new();
    for (name, t) in tensors {
        let t = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
        let values = Vec::<f32>::try_from(&t.view([-1])).map_err(|e| TrainError::Other(e.to_string()))?;
        let start = data.len();
        for v in values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        header.insert(name.clone(), serde_json::json!({ "dtype": "F32", "shape": t.size(), "data_offsets": [start, data.len()] }));
    }
    let mut head = serde_json::to_vec(&serde_json::Value::Object(header)).map_err(|e| TrainError::Other(e.to_string()))?;
    while head.len() % 8 != 0 {
        head.push(b' ');
    }
    let mut bytes = (head.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&head);
    bytes.extend_from_slice(&data);
    difforge_core::write_atomic(path, &bytes).map_err(|e| TrainError::io(path, e))
}

/// The metadata of an adapter file.
pub fn read_meta(path: &Path) -> Result<AdapterMeta, TrainError> {
    let bad = |reason: String| TrainError::checkpoint(path, reason);
    let mut f = std::fs::File::open(path).map_err(|e| TrainError::io(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let len = u64::from_le_bytes(len);
    if len > 100_000_000 {
        return Err(bad(format!("header of {len} bytes: not a safetensors file")));
    }
    let mut head = vec![0u8; len as usize];
    f.read_exact(&mut head).map_err(|e| bad(format!("truncated header: {e}")))?;
    let v: serde_json::Value = serde_json::from_slice(&head).map_err(|e| bad(format!("header is not JSON: {e}")))?;
    let meta = v.get("__metadata__").ok_or_else(|| bad("no difforge metadata: not a difforge LoRA adapter".into()))?;
    let text = meta.get("difforge").and_then(|m| m.as_str()).ok_or_else(|| bad("no difforge metadata: not a difforge LoRA adapter".into()))?;
    let m: AdapterMeta = serde_json::from_str(text).map_err(|e| bad(format!("bad metadata: {e}")))?;
    if m.format != FORMAT {
        return Err(bad(format!("format {:?}, expected {FORMAT:?}", m.format)));
    }
    Ok(m)
}

/// Saves the EMA adapter tensors of `model`, recording the base checkpoint.
pub fn save(path: &Path, model: &DiffusionModel, base_dir: &Path) -> Result<AdapterMeta, TrainError> {
    let lora = model.config.lora.clone().ok_or_else(|| TrainError::Config("the model has no [lora] adapters".into()))?;
    let meta = AdapterMeta { format: FORMAT.into(), base_sha256: checkpoint_hash(base_dir)?, lora, num_classes: model.config.model.num_classes };
    let tensors: Vec<(String, Tensor)> = sorted_variables(&model.ema_vs).into_iter().filter(|(n, _)| meta.lora.carries(n)).collect();
    let mut metadata = BTreeMap::new();
    metadata.insert("difforge".to_string(), serde_json::to_string(&meta).map_err(|e| TrainError::Other(e.to_string()))?);
    write_safetensors(path, &tensors, &metadata)?;
    Ok(meta)
}

/// Checks that an adapter was trained on the base checkpoint `base_dir`.
pub fn check_base(path: &Path, meta: &AdapterMeta, base_dir: &Path) -> Result<(), TrainError> {
    let hash = checkpoint_hash(base_dir)?;
    if hash != meta.base_sha256 {
        return Err(TrainError::checkpoint(
            path,
            format!("this adapter was trained on the base checkpoint with manifest SHA-256 {}, not on {} ({hash})", meta.base_sha256, base_dir.display()),
        ));
    }
    Ok(())
}

/// A base checkpoint with an unmerged adapter at `scale`.
pub fn load_with_adapter(base: &Path, adapter: &Path, scale: f64, device: Device) -> Result<DiffusionModel, TrainError> {
    let dir = checkpoint::resolve(base)?;
    let meta = read_meta(adapter)?;
    check_base(adapter, &meta, &dir)?;
    let mut cfg = checkpoint::read_config(&dir)?;
    if meta.num_classes != cfg.model.num_classes {
        cfg.model.num_classes = meta.num_classes;
    }
    cfg.lora = Some(meta.lora.clone());
    cfg.finetune.from = Some(dir.clone());
    let mut model = DiffusionModel::with_lora_scale(&cfg, device, scale)?;
    checkpoint::init_from(&dir, &mut model)?;
    let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(adapter).map_err(|e| TrainError::checkpoint(adapter, e.to_string()))?.into_iter().collect();
    for vs in [&model.vs, &model.ema_vs] {
        for (name, var) in sorted_variables(vs).into_iter().filter(|(n, _)| meta.lora.carries(n)) {
            let src = tensors.get(&name).ok_or_else(|| TrainError::checkpoint(adapter, format!("adapter tensor `{name}` is missing")))?;
            if src.size() != var.size() {
                return Err(TrainError::checkpoint(adapter, format!("adapter tensor `{name}` has shape {:?}, expected {:?}", src.size(), var.size())));
            }
            tch::no_grad(|| var.shallow_clone().copy_(src));
        }
    }
    Ok(model)
}

/// The base weights with the adapter folded in (W + scale * alpha / rank * up @ down), named as
/// the base model's variables.
pub fn merged_weights(model: &DiffusionModel, scale: f64) -> Result<Vec<(String, Tensor)>, TrainError> {
    let lora = model.config.lora.as_ref().ok_or_else(|| TrainError::Config("no [lora] adapters to merge".into()))?;
    let factor = scale * lora.alpha / lora.rank as f64;
    let vars: HashMap<String, Tensor> = sorted_variables(&model.ema_vs).into_iter().collect();
    let mut out = Vec::new();
    for (name, t) in sorted_variables(&model.ema_vs) {
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
