//! A single-file checkpoint (.safetensors or .ckpt: the form kohya, Civitai and webui users hold)
//! as a run's `model.base`. It is converted once into a diffusers folder in difforge's cache,
//! named by the file's fingerprint (name, size, SHA-256 of its first and last MiB) and by the
//! folder its configs came from, and every later load (the run, its resume, `sample` and `serve`
//! of the run) reads that folder: the conversion is deterministic, so a removed cache is rebuilt
//! with the same bytes and the run's base fingerprint still holds. The configs, tokenizers and
//! scheduler come from `model.base_config` (a diffusers folder of the file's architecture), else
//! from the published architecture the file's keys show, with CLIP's built-in tokenizer and SD's
//! DDIM schedule (as `difforge sample` reads such a file).

use super::components::Networks;
use super::pipeline::is_diffusers_folder;
use super::published::{scheduler_settings, settings_of};
use super::scheduler::SchedulerConfig;
use super::single_file::{read_checkpoint_lazy, Family};
use crate::error::ModelError;
use difforge_config::StableDiffusionConfig;
use difforge_core::ConfigError;
use difforge_diffusion::{DiffusionConfig, SamplerConfig};
use difforge_nn::sd::presets::SdPreset;
use difforge_nn::sd::tokenizer::ClipTokenizer;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tch::Device;

/// The diffusers folder a run's base is read from: `model.base` itself when it is a folder, its
/// cached conversion when it is a single file (converted now if the cache lacks it).
pub fn base_folder(config: &StableDiffusionConfig) -> Result<PathBuf, ModelError> {
    folder_of(&config.base, config.base_config.as_deref())
}

/// The diffusers folder of `model`: itself when it is a folder, the cached conversion of a single
/// file (with `config`'s configs, else the published architecture's).
pub fn folder_of(model: &Path, config: Option<&Path>) -> Result<PathBuf, ModelError> {
    if !model.is_file() {
        return Ok(model.to_path_buf());
    }
    if let Some(dir) = config.filter(|d| !is_diffusers_folder(d)) {
        return Err(ConfigError::new("model.base_config", dir.display(), "a diffusers folder (model_index.json, unet/, ...) of the file's architecture").into());
    }
    let folder = cache_root().join(cache_name(model, config)?);
    if is_diffusers_folder(&folder) {
        return Ok(folder);
    }
    convert(model, config, &folder)?;
    Ok(folder)
}

/// The version of the conversion, part of every cached folder's name: a change to what a
/// converted folder holds bumps it, so no folder written by older code is reused.
const CONVERSION: u32 = 1;

/// The `[diffusion]` and `[sample]` settings a single-file base has once converted, without
/// converting it: no tensor may be made while a run's config is read, because the run pins its
/// CPU kernels only afterwards and libtorch fixes them at its first computation. They are the
/// cached folder's, `model.base_config`'s, or (a `.safetensors` of a published architecture)
/// SD's DDIM with the preset's prediction, read from the file's header alone. None for a `.ckpt`
/// with neither (its keys need its pickle read): the family's loading then names the values.
pub fn settings_before_conversion(config: &StableDiffusionConfig) -> Result<Option<(DiffusionConfig, SamplerConfig)>, ModelError> {
    let base = &config.base;
    let cached = cache_root().join(cache_name(base, config.base_config.as_deref())?);
    if let Some(folder) = [Some(cached.as_path()), config.base_config.as_deref()].into_iter().flatten().find(|d| is_diffusers_folder(d)) {
        return scheduler_settings(folder).map(Some);
    }
    if config.base_config.is_some() || !base.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors")) {
        return Ok(None);
    }
    let keys: Vec<String> = read_checkpoint_lazy(base)?.into_keys().collect();
    let family = Family::detect(base, keys.iter())?;
    let preset = SdPreset::named(family.preset())?;
    let scheduler = SchedulerConfig::stable_diffusion(preset.prediction_type);
    settings_of(&scheduler, base, family == Family::Sdxl).map(Some)
}

/// `$DIFFORGE_CACHE_DIR/sd-bases`, else `~/.cache/difforge/sd-bases`.
fn cache_root() -> PathBuf {
    match std::env::var_os("DIFFORGE_CACHE_DIR") {
        Some(dir) => PathBuf::from(dir).join("sd-bases"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/difforge/sd-bases"),
    }
}

/// `<file stem>-<16 hex digits>` of the file's fingerprint and the config folder's path.
fn cache_name(file: &Path, config: Option<&Path>) -> Result<String, ModelError> {
    let fingerprint = crate::family::stable_diffusion::fingerprint_file(file).map_err(|e| ModelError::io(file, e))?;
    let config = match config {
        Some(dir) => std::fs::canonicalize(dir).map_err(|e| ModelError::io(dir, e))?.display().to_string(),
        None => "published architecture".to_string(),
    };
    let digest = difforge_core::sha256_hex(format!("conversion {CONVERSION}|{fingerprint}|{config}").as_bytes());
    let stem = file.file_stem().map_or_else(|| "base".into(), |s| s.to_string_lossy().into_owned());
    Ok(format!("{stem}-{}", &digest[..16]))
}

/// Converts `file` into the diffusers folder `out` (written whole under a temporary name).
fn convert(file: &Path, config: Option<&Path>, out: &Path) -> Result<(), ModelError> {
    let start = std::time::Instant::now();
    let parent = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
    let written_configs;
    let config_dir = match config {
        Some(dir) => dir,
        None => {
            written_configs = tempfile::Builder::new().prefix(".configs-").tempdir_in(parent).map_err(|e| ModelError::io(parent, e))?;
            write_published_configs(file, written_configs.path())?;
            written_configs.path()
        }
    };
    let (family, networks) = Networks::load_single_file(file, config_dir, Device::Cpu).map_err(|e| match config {
        Some(_) => e,
        None => ModelError::Other(format!(
            "{e} (the file was read as the published architecture its keys show; for another one set model.base_config to a diffusers folder of it, or convert the file: difforge convert --from FILE --to diffusers --config DIR --out FOLDER)"
        )),
    })?;
    match networks.write_diffusers(config_dir, out) {
        // Another process converted the same file meanwhile: its folder is the same.
        Err(_) if is_diffusers_folder(out) => {}
        result => result?,
    }
    tracing::info!(
        "model.base {}: a {} single file, converted once to the diffusers folder {} in {:.1} s (reused while the file is unchanged)",
        file.display(),
        family.name(),
        out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The configs folder of the published architecture `file`'s keys show: each network's
/// config.json, CLIP's tokenizer(s) with the family's padding, SD's DDIM schedule with the
/// preset's prediction and the model index.
fn write_published_configs(file: &Path, dir: &Path) -> Result<(), ModelError> {
    let keys: Vec<String> = read_checkpoint_lazy(file)?.into_keys().collect();
    let family = Family::detect(file, keys.iter())?;
    let preset = SdPreset::named(family.preset())?;
    let json = preset.json();
    let with_class = |text: &str, class: &str| -> Result<Value, ModelError> {
        let mut value: Value = serde_json::from_str(text).map_err(|e| ModelError::Other(format!("the built-in {class} config: {e}")))?;
        value["_class_name"] = json!(class);
        Ok(value)
    };
    write_json(&dir.join("unet/config.json"), &with_class(json.unet, "UNet2DConditionModel")?)?;
    let mut vae = json.vae;
    vae["_class_name"] = json!("AutoencoderKL");
    write_json(&dir.join("vae/config.json"), &vae)?;
    // SD 1.x and SDXL's first tokenizer pad with the end token, OpenCLIP's (SD 2.x, SDXL's
    // second) with "!".
    let bang_pads = match family {
        Family::Sd1 => vec![false],
        Family::Sd2 => vec![true],
        Family::Sdxl => vec![false, true],
    };
    for (i, (text, bang)) in json.text_encoders.iter().zip(bang_pads).enumerate() {
        let suffix = if i == 0 { String::new() } else { format!("_{}", i + 1) };
        write_json(
            &dir.join(format!("text_encoder{suffix}/config.json")),
            &serde_json::from_str::<Value>(text).map_err(|e| ModelError::Other(e.to_string()))?,
        )?;
        write_tokenizer(&dir.join(format!("tokenizer{suffix}")), bang)?;
    }
    write_json(&dir.join("scheduler/scheduler_config.json"), &ddim_config(preset.prediction_type))?;
    write_json(&dir.join("model_index.json"), &model_index(family))
}

fn write_tokenizer(dir: &Path, bang_pad: bool) -> Result<(), ModelError> {
    ClipTokenizer::write_embedded(dir)?;
    if bang_pad {
        for name in ["special_tokens_map.json", "tokenizer_config.json"] {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
            let mut value: Value = serde_json::from_str(&text).map_err(|e| ModelError::checkpoint(&path, e.to_string()))?;
            value["pad_token"] = json!("!");
            write_json(&path, &value)?;
        }
    }
    Ok(())
}

/// Stable Diffusion's DDIM `scheduler_config.json` (SD 1.x, 2.x and XL ship these settings).
fn ddim_config(prediction_type: &str) -> Value {
    json!({
        "_class_name": "DDIMScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": false,
        "num_train_timesteps": 1000,
        "prediction_type": prediction_type,
        "set_alpha_to_one": false,
        "steps_offset": 1,
        "timestep_spacing": "leading",
    })
}

fn model_index(family: Family) -> Value {
    let mut index = json!({
        "_class_name": "StableDiffusionPipeline",
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    });
    if family == Family::Sdxl {
        index["_class_name"] = json!("StableDiffusionXLPipeline");
        index["text_encoder_2"] = json!(["transformers", "CLIPTextModelWithProjection"]);
        index["tokenizer_2"] = json!(["transformers", "CLIPTokenizer"]);
        index["force_zeros_for_empty_prompt"] = json!(true);
    }
    index
}

fn write_json(path: &Path, value: &Value) -> Result<(), ModelError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    }
    let text = serde_json::to_string_pretty(value).map_err(|e| ModelError::Other(e.to_string()))?;
    std::fs::write(path, text).map_err(|e| ModelError::io(path, e))
}
