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

/// Loads weights into `vs`: every variable must be present with the same shape.
pub fn load(vs: &mut VarStore, path: &Path) -> Result<(), NnError> {
    let err = |reason: String| NnError::Load { path: path.to_path_buf(), reason };
    let tensors = tch::Tensor::read_safetensors(path).map_err(|e| err(e.to_string()))?;
    let named: std::collections::HashMap<String, tch::Tensor> = tensors.into_iter().collect();
    let vars = vs.variables();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        let var = &vars[name];
        let src = named.get(name).ok_or_else(|| err(format!("tensor `{name}` is missing")))?;
        if src.size() != var.size() {
            return Err(err(format!("tensor `{name}` has shape {:?}, the model expects {:?}", src.size(), var.size())));
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
