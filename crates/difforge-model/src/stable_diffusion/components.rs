//! A Stable Diffusion model's networks with the variables they were built on (named as
//! diffusers names the tensors): built from a diffusers folder's `*/config.json`, loaded from
//! its weights, and written back as a complete diffusers folder. Single-file checkpoints load
//! into and are written from the same networks (see `single_file`).

use crate::error::ModelError;
use difforge_nn::sd::autoencoder_kl::AutoencoderKl;
use difforge_nn::sd::load::{load_component, read_config};
use difforge_nn::sd::presets::SdPreset;
use difforge_nn::sd::unet_2d_condition::UNet2DConditionModel;
use difforge_nn::sd::{clip_text, ClipTextConfig, ClipTextModel};
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{Device, Tensor};

/// The networks of a diffusers folder, by folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    Unet,
    Vae,
    TextEncoder,
    /// SDXL's second text encoder.
    TextEncoder2,
}

impl Part {
    pub fn folder(self) -> &'static str {
        match self {
            Part::Unet => "unet",
            Part::Vae => "vae",
            Part::TextEncoder => "text_encoder",
            Part::TextEncoder2 => "text_encoder_2",
        }
    }

    /// The weight file's stem: diffusers' for its models, transformers' for the text encoders.
    pub(crate) fn stem(self) -> &'static str {
        match self {
            Part::Unet | Part::Vae => "diffusion_pytorch_model",
            Part::TextEncoder | Part::TextEncoder2 => "model",
        }
    }

    fn tokenizer(self) -> Option<&'static str> {
        match self {
            Part::TextEncoder => Some("tokenizer"),
            Part::TextEncoder2 => Some("tokenizer_2"),
            Part::Unet | Part::Vae => None,
        }
    }
}

/// A network and the variables it was built on.
pub struct Net<M> {
    pub vars: VarStore,
    pub net: M,
}

/// The networks of one model.
pub struct Networks {
    pub unet: Net<UNet2DConditionModel>,
    pub vae: Net<AutoencoderKl>,
    /// `text_encoder/` and, for SDXL, `text_encoder_2/`.
    pub text_encoders: Vec<Net<ClipTextModel>>,
}

/// The parts of `model_index.json` that decide which networks a folder has.
#[derive(serde::Deserialize)]
struct Index {
    #[serde(default)]
    text_encoder_2: Option<serde_json::Value>,
}

/// Whether `dir`'s `model_index.json` names a second text encoder (SDXL).
pub fn has_second_text_encoder(dir: &Path) -> Result<bool, ModelError> {
    let path = dir.join("model_index.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::checkpoint(&path, e.to_string()))?;
    let index: Index = serde_json::from_str(&text).map_err(|e| ModelError::checkpoint(&path, format!("not a valid model index: {e}")))?;
    Ok(index.text_encoder_2.is_some_and(|v| !v.is_null()))
}

/// A config error named by its `config.json`.
fn config_err(dir: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::checkpoint(dir.join("config.json"), e.to_string())
}

impl Networks {
    /// The networks `config_dir`'s component configs describe, with fresh weights.
    pub fn build(config_dir: &Path, device: Device) -> Result<Networks, ModelError> {
        let dir = config_dir.join("unet");
        let vars = VarStore::new(device);
        let net = UNet2DConditionModel::new(&vars.root(), &read_config(&dir)?).map_err(|e| config_err(&dir, e))?;
        let unet = Net { vars, net };
        let dir = config_dir.join("vae");
        let vars = VarStore::new(device);
        let net = AutoencoderKl::new(&vars.root(), &read_config(&dir)?).map_err(|e| config_err(&dir, e))?;
        let vae = Net { vars, net };
        let encoders: &[Part] = if has_second_text_encoder(config_dir)? { &[Part::TextEncoder, Part::TextEncoder2] } else { &[Part::TextEncoder] };
        let mut text_encoders = Vec::new();
        for part in encoders {
            let dir = config_dir.join(part.folder());
            let config: ClipTextConfig = read_config(&dir)?;
            config.validate().map_err(|e| config_err(&dir, e))?;
            let vars = VarStore::new(device);
            let net = ClipTextModel::new(&vars.root(), &config).map_err(|e| config_err(&dir, e))?;
            text_encoders.push(Net { vars, net });
        }
        Ok(Networks { unet, vae, text_encoders })
    }

    /// A preset's networks with fresh weights.
    pub fn from_preset(preset: &SdPreset, device: Device) -> Result<Networks, ModelError> {
        let vars = VarStore::new(device);
        let net = UNet2DConditionModel::new(&vars.root(), &preset.unet)?;
        let unet = Net { vars, net };
        let vars = VarStore::new(device);
        let net = AutoencoderKl::new(&vars.root(), &preset.vae)?;
        let vae = Net { vars, net };
        let mut text_encoders = Vec::new();
        for config in &preset.text_encoders {
            let vars = VarStore::new(device);
            let net = ClipTextModel::new(&vars.root(), config)?;
            text_encoders.push(Net { vars, net });
        }
        Ok(Networks { unet, vae, text_encoders })
    }

    /// A diffusers folder's networks with its weights (strictly: every tensor, nothing else).
    pub fn load_diffusers(dir: &Path, device: Device) -> Result<Networks, ModelError> {
        let mut networks = Networks::build(dir, device)?;
        for (part, vars) in networks.parts() {
            let folder = dir.join(part.folder());
            match part {
                Part::Unet | Part::Vae => load_component(vars, &folder, part.stem(), None)?,
                Part::TextEncoder | Part::TextEncoder2 => clip_text::load_weights(vars, &folder, None)?,
            }
        }
        networks.freeze_conditioning();
        Ok(networks)
    }

    /// The VAE and text encoders stay fixed, as they do when loaded alone.
    pub(crate) fn freeze_conditioning(&mut self) {
        self.vae.vars.freeze();
        for encoder in &mut self.text_encoders {
            encoder.vars.freeze();
        }
    }

    /// Each network's variables, by part.
    pub fn parts(&self) -> Vec<(Part, &VarStore)> {
        let mut parts = vec![(Part::Unet, &self.unet.vars), (Part::Vae, &self.vae.vars)];
        parts.extend([Part::TextEncoder, Part::TextEncoder2].into_iter().zip(self.text_encoders.iter().map(|e| &e.vars)));
        parts
    }

    /// Writes a complete diffusers folder at `out` (which must not exist): every network's
    /// `config.json` and weights (float32), the tokenizers, scheduler and `model_index.json` of
    /// `config_dir`. Written under a temporary name and renamed, so `out` is whole or absent.
    pub fn write_diffusers(&self, config_dir: &Path, out: &Path) -> Result<(), ModelError> {
        refuse_existing(out)?;
        let tmp = temporary_sibling(out)?;
        let result = self.write_folder(config_dir, &tmp).and_then(|()| {
            refuse_existing(out)?;
            std::fs::rename(&tmp, out).map_err(|e| ModelError::io(out, e))
        });
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }

    fn write_folder(&self, config_dir: &Path, dir: &Path) -> Result<(), ModelError> {
        for (part, vars) in self.parts() {
            let folder = dir.join(part.folder());
            copy_files(&config_dir.join(part.folder()), &folder, |name| name == "config.json")?;
            write_tensors(&sorted_variables(vars, None), &folder.join(format!("{}.safetensors", part.stem())))?;
            if let Some(tokenizer) = part.tokenizer() {
                copy_files(&config_dir.join(tokenizer), &dir.join(tokenizer), |_| true)?;
            }
        }
        copy_files(&config_dir.join("scheduler"), &dir.join("scheduler"), |_| true)?;
        let index = model_index(config_dir, &self.parts().iter().map(|(p, _)| *p).collect::<Vec<_>>())?;
        let path = dir.join("model_index.json");
        difforge_core::write_atomic(&path, index.as_bytes()).map_err(|e| ModelError::io(&path, e))?;
        difforge_core::atomic::sync_dir(dir).map_err(|e| ModelError::io(dir, e))
    }
}

/// `config_dir`'s model index with the components difforge does not write (safety checker,
/// feature extractor, ...) set to null, so that diffusers does not look for their folders.
fn model_index(config_dir: &Path, parts: &[Part]) -> Result<String, ModelError> {
    let path = config_dir.join("model_index.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::checkpoint(&path, e.to_string()))?;
    let mut index: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&text).map_err(|e| ModelError::checkpoint(&path, format!("not a valid model index: {e}")))?;
    let written: Vec<&str> = parts.iter().flat_map(|p| [Some(p.folder()), p.tokenizer()]).flatten().chain(["scheduler"]).collect();
    for (name, value) in index.iter_mut() {
        if value.is_array() && !written.contains(&name.as_str()) {
            *value = serde_json::json!([null, null]);
        }
    }
    serde_json::to_string_pretty(&index).map_err(|e| ModelError::Other(e.to_string()))
}

/// A variable store's tensors by name (sorted, so files are reproducible), on the CPU,
/// contiguous, converted to `kind` if given.
pub(crate) fn sorted_variables(vars: &VarStore, kind: Option<tch::Kind>) -> Vec<(String, Tensor)> {
    let mut named: Vec<(String, Tensor)> = tch::no_grad(|| {
        vars.variables()
            .into_iter()
            .map(|(name, t)| {
                let t = t.detach().to_device(Device::Cpu);
                (name, kind.map_or(t.shallow_clone(), |k| t.to_kind(k)).contiguous())
            })
            .collect()
    });
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

/// Writes a safetensors file and syncs it (the caller renames it into place).
pub(crate) fn write_tensors(tensors: &[(String, Tensor)], path: &Path) -> Result<(), ModelError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    }
    Tensor::write_safetensors(tensors, path).map_err(|e| ModelError::checkpoint(path, e.to_string()))?;
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(|e| ModelError::io(path, e))
}

/// Copies the plain files of `from` that `keep` accepts into `to`.
fn copy_files(from: &Path, to: &Path, keep: impl Fn(&str) -> bool) -> Result<(), ModelError> {
    std::fs::create_dir_all(to).map_err(|e| ModelError::io(to, e))?;
    let entries = std::fs::read_dir(from).map_err(|e| ModelError::checkpoint(from, e.to_string()))?;
    for entry in entries {
        let entry = entry.map_err(|e| ModelError::checkpoint(from, e.to_string()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_file() && keep(&name) {
            let bytes = std::fs::read(entry.path()).map_err(|e| ModelError::checkpoint(entry.path(), e.to_string()))?;
            difforge_core::write_atomic(&to.join(&name), &bytes).map_err(|e| ModelError::io(to.join(&name), e))?;
        }
    }
    Ok(())
}

/// Converting never replaces what is there.
pub(crate) fn refuse_existing(out: &Path) -> Result<(), ModelError> {
    if out.exists() {
        return Err(ModelError::Config(difforge_core::ConfigError::new("--out", out.display(), "a path that does not exist yet (nothing is overwritten)")));
    }
    Ok(())
}

/// A fresh temporary path beside `out` (same file system, so renaming it into place is atomic).
pub(crate) fn temporary_sibling(out: &Path) -> Result<PathBuf, ModelError> {
    let name = out.file_name().ok_or_else(|| ModelError::Config(difforge_core::ConfigError::new("--out", out.display(), "a file or folder name")))?;
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    if tmp.is_dir() {
        std::fs::remove_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    } else if tmp.exists() {
        std::fs::remove_file(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    }
    Ok(tmp)
}
