//! Weight files: safetensors, named by the VarStore paths, written atomically.

use crate::error::NnError;
use std::path::Path;
use tch::nn::VarStore;

/// Saves every variable of `vs` as safetensors (via a temporary file renamed into place).
pub fn save(vs: &VarStore, path: &Path) -> Result<(), NnError> {
    let err = |reason: String| NnError::Save { path: path.to_path_buf(), reason };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let tmp = dir.join(format!(".tmp-{}.safetensors", std::process::id()));
    vs.save(&tmp).map_err(|e| err(e.to_string()))?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| err(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
}

/// Loads weights into `vs`: every variable must be present with the same shape and element type.
pub fn load(vs: &mut VarStore, path: &Path) -> Result<(), NnError> {
    load_only(vs, path, |_| true)
}

/// [`load`] for the variables `wanted` names only; the others keep their values.
pub fn load_only(vs: &mut VarStore, path: &Path, wanted: impl Fn(&str) -> bool) -> Result<(), NnError> {
    let err = |reason: String| NnError::Load { path: path.to_path_buf(), reason };
    let tensors = tch::Tensor::read_safetensors(path).map_err(|e| err(e.to_string()))?;
    let named: std::collections::HashMap<String, tch::Tensor> = tensors.into_iter().collect();
    let vars = vs.variables();
    let mut names: Vec<&String> = vars.keys().filter(|n| wanted(n)).collect();
    names.sort();
    for name in names {
        let var = &vars[name];
        let src = named.get(name).ok_or_else(|| err(format!("tensor `{name}` is missing")))?;
        if src.size() != var.size() {
            return Err(err(format!("tensor `{name}` has shape {:?}, the model expects {:?}", src.size(), var.size())));
        }
        if src.kind() != var.kind() {
            return Err(err(format!("tensor `{name}` is {:?}, the model expects {:?}", src.kind(), var.kind())));
        }
        tch::no_grad(|| {
            let mut v = var.shallow_clone();
            v.copy_(src)
        });
    }
    Ok(())
}

/// The number of trainable scalars.
pub fn parameter_count(vs: &VarStore) -> i64 {
    vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
}

/// Writes named tensors as float32 safetensors with string metadata (the `__metadata__` map that
/// adapter files and the ecosystem's LoRA files carry), atomically.
pub fn save_with_metadata(path: &Path, tensors: &[(String, tch::Tensor)], metadata: &std::collections::HashMap<String, String>) -> Result<(), NnError> {
    let err = |reason: String| NnError::Save { path: path.to_path_buf(), reason };
    let mut raw = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_device(tch::Device::Cpu).to_kind(tch::Kind::Float).contiguous();
        let values = Vec::<f32>::try_from(&t.view([-1])).map_err(|e| err(e.to_string()))?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        raw.push((name.clone(), shape, bytes));
    }
    let views = raw
        .iter()
        .map(|(name, shape, bytes)| safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes).map(|v| (name.clone(), v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    let bytes = safetensors::serialize(views, Some(metadata.clone())).map_err(|e| err(e.to_string()))?;
    let bytes = sorted_header(&bytes).map_err(err)?;
    difforge_core::write_atomic(path, &bytes).map_err(|e| err(e.to_string()))
}

/// The file with its JSON header's keys (tensors and `__metadata__` entries) in sorted order:
/// `safetensors` writes the metadata map in hash order, and the same weights should give the
/// same bytes (a resumed run's files equal the uninterrupted run's).
fn sorted_header(bytes: &[u8]) -> Result<Vec<u8>, String> {
    type Sorted = std::collections::BTreeMap<String, serde_json::Value>;
    let n = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize).ok_or("no header")?;
    let header = bytes.get(8..8 + n).ok_or("a truncated header")?;
    let mut map: Sorted = serde_json::from_slice(header).map_err(|e| e.to_string())?;
    if let Some(meta) = map.remove("__metadata__") {
        let meta: std::collections::BTreeMap<String, String> = serde_json::from_value(meta).map_err(|e| e.to_string())?;
        map.insert("__metadata__".into(), serde_json::to_value(meta).map_err(|e| e.to_string())?);
    }
    let mut json = serde_json::to_vec(&map).map_err(|e| e.to_string())?;
    // The data after the header stays 8-byte aligned, as safetensors writes it.
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len() + bytes.len() - 8 - n);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&bytes[8 + n..]);
    Ok(out)
}

/// The `__metadata__` map of a safetensors file (empty when it has none), after checking that
/// the header describes the file.
pub fn read_metadata(path: &Path) -> Result<std::collections::HashMap<String, String>, NnError> {
    let err = |reason: String| NnError::Load { path: path.to_path_buf(), reason };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| err(format!("not a valid safetensors file: {e}")))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Device, Kind, Tensor};

    #[test]
    fn weights_of_another_type_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut vs = VarStore::new(Device::Cpu);
        let _w = vs.root().var("w", &[2, 3], nn::Init::Const(1.0));
        let path = dir.path().join("w.safetensors");
        Tensor::write_safetensors(&[("w", Tensor::ones([2, 3], (Kind::Int, Device::Cpu)))], &path).unwrap();
        let err = load(&mut vs, &path).unwrap_err().to_string();
        assert!(err.contains("`w` is Int") && err.contains("Float"), "{err}");
        Tensor::write_safetensors(&[("w", Tensor::ones([2, 3], (Kind::Float, Device::Cpu)))], &path).unwrap();
        load(&mut vs, &path).unwrap();
    }
}
