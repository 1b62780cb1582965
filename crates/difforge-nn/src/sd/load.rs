//! Reading a diffusers or transformers component folder: its `config.json` into a typed config,
//! and its weights (one safetensors file, a `*.fp16.safetensors` variant, or shards listed in a
//! `*.safetensors.index.json`; older folders' torch.save `.bin` files the same ways) into a
//! network's variables, strictly: every variable present with its shape, no tensor left over,
//! or nothing is loaded at all.

use super::config_bounds::ComponentConfig;
use super::lazy_tensor::LazyTensor;
use crate::error::NnError;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::Tensor;

/// How many names an error lists before it says "and N more".
const NAMES_SHOWN: usize = 8;

/// Reads `dir/config.json` into `T` and checks its sizes before anything is built from them;
/// the error names the file and serde's line, column and field, or the field out of range.
pub fn read_config<T: DeserializeOwned + ComponentConfig>(dir: &Path) -> Result<T, NnError> {
    let path = dir.join("config.json");
    let err = |reason: String| NnError::Load { path: path.clone(), reason };
    let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
    let config: T = serde_json::from_str(&text).map_err(|e| err(format!("not a valid config: {e}")))?;
    config.check_sizes().map_err(|e| NnError::Config(e.with_origin(path.display().to_string())))?;
    Ok(config)
}

/// The weight files of a component folder, given the file stem diffusers or transformers uses
/// (`diffusion_pytorch_model` or `model`) and an optional variant (`fp16`): the single file if
/// there is one, else the shards of its index; safetensors first, then torch.save `.bin` files
/// (transformers names those `pytorch_model`).
pub fn weight_files(dir: &Path, stem: &str, variant: Option<&str>) -> Result<Vec<PathBuf>, NnError> {
    let bin_stem = if stem == "model" { "pytorch_model" } else { stem };
    let mut tried = Vec::new();
    for (stem, ext) in [(stem, "safetensors"), (bin_stem, "bin")] {
        let name = match variant {
            Some(v) => format!("{stem}.{v}.{ext}"),
            None => format!("{stem}.{ext}"),
        };
        let single = dir.join(&name);
        if single.is_file() {
            return Ok(vec![single]);
        }
        let index = dir.join(format!("{name}.index.json"));
        if index.is_file() {
            return shards_of(&index);
        }
        tried.extend([name.clone(), format!("{name}.index.json")]);
    }
    // Folders downloaded with only the half-precision files (`variant="fp16"` in diffusers)
    // load as they are: the weights are converted to the networks' float32.
    if variant.is_none() {
        if let Ok(files) = weight_files(dir, stem, Some("fp16")) {
            return Ok(files);
        }
    }
    Err(NnError::Load { path: dir.to_path_buf(), reason: format!("has none of the weight files {}", tried.join(", ")) })
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

fn shards_of(index: &Path) -> Result<Vec<PathBuf>, NnError> {
    let err = |reason: String| NnError::Load { path: index.to_path_buf(), reason };
    let text = std::fs::read_to_string(index).map_err(|e| err(e.to_string()))?;
    let parsed: ShardIndex = serde_json::from_str(&text).map_err(|e| err(format!("not a valid shard index: {e}")))?;
    let files: BTreeSet<&String> = parsed.weight_map.values().collect();
    let dir = index.parent().unwrap_or(Path::new("."));
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Every tensor of `files` by name, with the file it is in; a name found in two files is an
/// error. Safetensors files are mapped and only their headers read (see [`LazyTensor`]): each
/// tensor's data is read when it is materialised, as [`load_strict`] does one at a time; torch.save
/// `.bin` files are read whole.
pub fn read_tensors(files: &[PathBuf]) -> Result<HashMap<String, (LazyTensor, PathBuf)>, NnError> {
    let mut all = HashMap::new();
    for file in files {
        let err = |reason: String| NnError::Load { path: file.clone(), reason };
        let tensors: Vec<(String, LazyTensor)> = if file.extension().is_some_and(|e| e == "bin") {
            crate::torch_pickle::load(file)?.into_iter().map(|(name, t)| (name, LazyTensor::from(t))).collect()
        } else {
            LazyTensor::read_safetensors(file)?
        };
        for (name, tensor) in tensors {
            if let Some((_, first)) = all.insert(name.clone(), (tensor, file.clone())) {
                return Err(err(format!("tensor `{name}` is also in {}", first.display())));
            }
        }
    }
    Ok(all)
}

fn listed(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(NAMES_SHOWN).map(String::as_str).collect();
    let more = names.len().saturating_sub(NAMES_SHOWN);
    let tail = if more > 0 { format!(" and {more} more") } else { String::new() };
    format!("`{}`{tail}", shown.join("`, `"))
}

/// Copies `tensors` into the variables of `vs` (converting fp16/bf16 to the variable's type),
/// reading one tensor at a time. Checked before anything is read or copied: a missing variable,
/// a tensor the network has no place for, or a shape mismatch (both shapes given) fails the load
/// and names `source`. (The headers were checked when the files were mapped; a tensor that still
/// fails to read, or a derived one that comes out wrong, stops the copy where it is.)
pub fn load_strict(vs: &VarStore, tensors: &HashMap<String, (LazyTensor, PathBuf)>, source: &Path) -> Result<(), NnError> {
    load_strict_except(vs, tensors, source, |_| false)
}

/// [`load_strict`] for the variables `own` does not claim: those (e.g. the LoRA adapters a
/// fine-tune adds) keep their initial values and the file must not have them.
pub fn load_strict_except(vs: &VarStore, tensors: &HashMap<String, (LazyTensor, PathBuf)>, source: &Path, own: impl Fn(&str) -> bool) -> Result<(), NnError> {
    let err = |reason: String| NnError::Load { path: source.to_path_buf(), reason };
    let mut vars = vs.variables();
    vars.retain(|name, _| !own(name));
    let mut missing: Vec<String> = vars.keys().filter(|k| !tensors.contains_key(*k)).cloned().collect();
    let mut unexpected: Vec<String> = tensors.keys().filter(|k| !vars.contains_key(*k)).cloned().collect();
    missing.sort();
    unexpected.sort();
    if !missing.is_empty() {
        return Err(err(format!("{} tensor(s) the model needs are missing: {}", missing.len(), listed(&missing))));
    }
    if !unexpected.is_empty() {
        return Err(err(format!("{} tensor(s) are not part of the model: {}", unexpected.len(), listed(&unexpected))));
    }
    for (name, var) in &vars {
        let (src, file) = &tensors[name];
        if src.size() != var.size() {
            let reason = format!("tensor `{name}` has shape {:?}, the model expects {:?}", src.size(), var.size());
            return Err(NnError::Load { path: file.clone(), reason });
        }
    }
    // In the files' order, so that a mapped file is read front to back.
    let mut order: Vec<(&String, &Tensor)> = vars.iter().collect();
    order.sort_by_key(|(name, _)| tensors[*name].0.file_order());
    tch::no_grad(|| {
        for (name, var) in order {
            let src = tensors[name].0.materialise()?;
            let mut v = var.shallow_clone();
            v.f_copy_(&src.to_kind(var.kind())).map_err(|e| NnError::Load { path: tensors[name].1.clone(), reason: format!("tensor `{name}`: {e}") })?;
        }
        Ok(())
    })
}

/// `tensors` with `prefix` in front of every key when none has it and `marker` (a key only the
/// flat form has) is there. transformers 5 made `CLIPTextModel` and `CLIPVisionModel` flat: one
/// created in it saves `embeddings.…` where 4.x (and the `…WithProjection` classes) save
/// `text_model.embeddings.…` / `vision_model.embeddings.…`.
pub fn prefixed_if_flat<T>(tensors: HashMap<String, T>, prefix: &str, marker: &str) -> HashMap<String, T> {
    if tensors.keys().any(|k| k.starts_with(prefix)) || !tensors.contains_key(marker) {
        return tensors;
    }
    tensors.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)).collect()
}

/// Loads a component's weights from `dir` (see [`weight_files`]) into `vs`.
pub fn load_component(vs: &VarStore, dir: &Path, stem: &str, variant: Option<&str>) -> Result<(), NnError> {
    let files = weight_files(dir, stem, variant)?;
    let tensors = read_tensors(&files)?;
    load_strict(vs, &tensors, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keys_get_the_prefix_and_prefixed_ones_stay() {
        let map = |keys: &[&str]| keys.iter().map(|k| (k.to_string(), 0)).collect::<HashMap<String, i32>>();
        let mut flat: Vec<String> = prefixed_if_flat(
            map(&["embeddings.token_embedding.weight", "encoder.layers.0.mlp.fc1.weight"]),
            "text_model.",
            "embeddings.token_embedding.weight",
        )
        .into_keys()
        .collect();
        flat.sort();
        assert_eq!(flat, ["text_model.embeddings.token_embedding.weight", "text_model.encoder.layers.0.mlp.fc1.weight"]);
        let kept = map(&["text_model.embeddings.token_embedding.weight", "text_projection.weight"]);
        assert_eq!(prefixed_if_flat(kept.clone(), "text_model.", "embeddings.token_embedding.weight"), kept);
        let other = map(&["conv_in.weight"]);
        assert_eq!(prefixed_if_flat(other.clone(), "text_model.", "embeddings.token_embedding.weight"), other);
    }
    use tch::{nn, Device, Kind};

    fn store() -> VarStore {
        let vs = VarStore::new(Device::Cpu);
        let _a = (vs.root() / "a").var("weight", &[2, 3], nn::Init::Const(0.0));
        let _b = (vs.root() / "b").var("bias", &[3], nn::Init::Const(0.0));
        vs
    }

    fn write(dir: &Path, file: &str, tensors: &[(&str, Tensor)]) -> PathBuf {
        let path = dir.join(file);
        Tensor::write_safetensors(tensors, &path).unwrap();
        path
    }

    #[test]
    fn half_precision_weights_load_and_nothing_loads_when_one_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let vs = store();
        let half = |shape: &[i64]| Tensor::ones(shape, (Kind::Half, Device::Cpu));
        write(dir.path(), "m.fp16.safetensors", &[("a.weight", half(&[2, 3])), ("b.bias", half(&[3]))]);
        load_component(&vs, dir.path(), "m", Some("fp16")).unwrap();
        assert_eq!(vs.variables()["a.weight"].sum(Kind::Float).double_value(&[]), 6.0);
        // With only the fp16 files, no variant asked for still finds them.
        assert_eq!(weight_files(dir.path(), "m", None).unwrap(), vec![dir.path().join("m.fp16.safetensors")]);

        let f = |shape: &[i64]| Tensor::full(shape, 2.0, (Kind::Float, Device::Cpu));
        write(dir.path(), "m.safetensors", &[("a.weight", f(&[2, 3])), ("b.bias", f(&[4]))]);
        let e = load_component(&vs, dir.path(), "m", None).unwrap_err().to_string();
        assert!(e.contains("m.safetensors") && e.contains("`b.bias` has shape [4], the model expects [3]"), "{e}");
        assert_eq!(vs.variables()["a.weight"].sum(Kind::Float).double_value(&[]), 6.0, "a.weight was loaded half");

        write(dir.path(), "m.safetensors", &[("a.weight", f(&[2, 3])), ("c", f(&[1]))]);
        let e = load_component(&vs, dir.path(), "m", None).unwrap_err().to_string();
        assert!(e.contains("missing: `b.bias`"), "{e}");
    }

    #[test]
    fn shards_are_read_through_their_index() {
        let dir = tempfile::tempdir().unwrap();
        let vs = store();
        let f = |shape: &[i64]| Tensor::full(shape, 3.0, (Kind::Float, Device::Cpu));
        write(dir.path(), "m-00001-of-00002.safetensors", &[("a.weight", f(&[2, 3]))]);
        write(dir.path(), "m-00002-of-00002.safetensors", &[("b.bias", f(&[3])), ("extra", f(&[1]))]);
        let index = r#"{"metadata": {}, "weight_map": {"a.weight": "m-00001-of-00002.safetensors", "b.bias": "m-00002-of-00002.safetensors"}}"#;
        std::fs::write(dir.path().join("m.safetensors.index.json"), index).unwrap();
        let e = load_component(&vs, dir.path(), "m", None).unwrap_err().to_string();
        assert!(e.contains("not part of the model: `extra`"), "{e}");
        write(dir.path(), "m-00002-of-00002.safetensors", &[("b.bias", f(&[3]))]);
        load_component(&vs, dir.path(), "m", None).unwrap();
        assert_eq!(vs.variables()["b.bias"].sum(Kind::Float).double_value(&[]), 9.0);
    }
}
