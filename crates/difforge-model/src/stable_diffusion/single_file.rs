//! Single-file Stable Diffusion checkpoints, as most models are published: one `.safetensors`
//! or `.ckpt` (a `torch.save` pickle, usually `{"state_dict": ...}`) with the original code's
//! tensor names (CompVis for SD 1.x / 2.x, SGM for SDXL, OpenCLIP for their OpenCLIP text
//! encoders). A file holds weights only: the architecture and the tokenizers and scheduler come
//! from a diffusers folder given beside it (`config_dir`), whose networks are built and then
//! loaded strictly from the file, every tensor renamed by the rule tables of
//! `single_file_unet`, `single_file_vae` and `single_file_clip`. Writing is the same mapping
//! the other way.

use super::components::{refuse_existing, sorted_variables, temporary_sibling, write_tensors, Networks, Part};
use super::pipeline::{Parts, StableDiffusion};
use super::scheduler::SchedulerConfig;
use super::single_file_clip::{self as clip, ClipLayout};
use super::single_file_rules::{Reshape, Rules};
use super::{single_file_unet, single_file_vae};
use crate::error::ModelError;
use difforge_nn::sd::lazy_tensor::LazyTensor;
use difforge_nn::sd::load::load_strict;
use difforge_nn::sd::presets::SdPreset;
use difforge_nn::sd::tokenizer::{ClipTokenizer, EmbeddedPad};
use difforge_nn::sd::ClipActivation;
use difforge_nn::NnError;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// How many names an error lists before it says "and N more".
const NAMES_SHOWN: usize = 8;

/// The generations of the family as a single file tells them apart: by its text encoders.
/// (Whether a model predicts noise or velocity is not in the file; the config folder's
/// scheduler says.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// OpenAI's CLIP ViT-L under `cond_stage_model.transformer.`.
    Sd1,
    /// OpenCLIP ViT-H under `cond_stage_model.model.`.
    Sd2,
    /// CLIP ViT-L under `conditioner.embedders.0.transformer.`, OpenCLIP bigG under
    /// `conditioner.embedders.1.model.`.
    Sdxl,
}

impl Family {
    /// The preset of the family's published architecture (SD 2.x: the 768-pixel v-prediction
    /// 2.1; its 512-pixel base predicts noise: `--prediction epsilon`).
    pub fn preset(self) -> &'static str {
        match self {
            Family::Sd1 => "sd15",
            Family::Sd2 => "sd21",
            Family::Sdxl => "sdxl",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Sd1 => "SD 1.x",
            Family::Sd2 => "SD 2.x",
            Family::Sdxl => "SDXL",
        }
    }

    /// The prefix of `part`'s tensors in a single file and how its text encoder is laid out.
    fn layout(self, part: Part) -> (&'static str, ClipLayout) {
        match (self, part) {
            (_, Part::Unet) => ("model.diffusion_model.", ClipLayout::Transformers),
            (_, Part::Vae) => ("first_stage_model.", ClipLayout::Transformers),
            (Family::Sd1, _) => ("cond_stage_model.transformer.", ClipLayout::Transformers),
            (Family::Sd2, _) => ("cond_stage_model.model.", ClipLayout::OpenClip),
            (Family::Sdxl, Part::TextEncoder) => ("conditioner.embedders.0.transformer.", ClipLayout::Transformers),
            (Family::Sdxl, Part::TextEncoder2) => ("conditioner.embedders.1.model.", ClipLayout::OpenClip),
        }
    }

    /// The family a file's keys show, as diffusers' `infer_diffusers_model_type` tells them
    /// apart by their text encoders.
    pub fn detect<'a>(file: &Path, keys: impl IntoIterator<Item = &'a String> + Clone) -> Result<Family, ModelError> {
        let any = |prefix: &str| keys.clone().into_iter().any(|k| k.starts_with(prefix));
        if any("conditioner.embedders.1.") {
            Ok(Family::Sdxl)
        } else if any("conditioner.embedders.0.model.") {
            Err(ModelError::checkpoint(
                file,
                "an SDXL refiner checkpoint (one OpenCLIP text encoder under conditioner.embedders.0), which difforge does not load",
            ))
        } else if any("cond_stage_model.model.") {
            Ok(Family::Sd2)
        } else if any("cond_stage_model.transformer.") {
            Ok(Family::Sd1)
        } else {
            Err(ModelError::checkpoint(
                file,
                "not a Stable Diffusion checkpoint: no text encoder tensors (cond_stage_model.transformer.* for SD 1.x, cond_stage_model.model.* for SD 2.x, \
                 conditioner.embedders.1.* for SDXL)",
            ))
        }
    }

    /// The family of networks loaded from a diffusers folder: SDXL has two text encoders, SD 2.x
    /// one OpenCLIP encoder (GELU; OpenAI's CLIP of SD 1.x uses quick GELU).
    pub fn of(networks: &Networks) -> Family {
        match networks.text_encoders.as_slice() {
            [_, _] => Family::Sdxl,
            [e] if e.net.config().hidden_act == ClipActivation::Gelu => Family::Sd2,
            _ => Family::Sd1,
        }
    }
}

/// Every tensor of a `.safetensors`, `.ckpt`, `.pt` or `.pth` file, by name; a pickle's
/// top-level `state_dict` is unwrapped. All read into memory: loading reads
/// [`read_checkpoint_lazy`]'s tensors one at a time instead.
pub fn read_checkpoint(file: &Path) -> Result<HashMap<String, Tensor>, ModelError> {
    read_checkpoint_lazy(file)?.into_iter().map(|(name, t)| Ok((name, t.materialise()?))).collect()
}

/// [`read_checkpoint`] without reading a `.safetensors` file's data: the file is mapped, its
/// header checked, and each tensor read when it is materialised. (A pickle is read whole.)
pub fn read_checkpoint_lazy(file: &Path) -> Result<HashMap<String, LazyTensor>, ModelError> {
    let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let named = match ext.as_str() {
        "safetensors" => LazyTensor::read_safetensors(file).map_err(|e| match e {
            NnError::Load { path, reason } => ModelError::checkpoint(path, reason),
            e => e.into(),
        })?,
        "ckpt" | "pt" | "pth" => difforge_nn::torch_pickle::load(file)?.into_iter().map(|(name, t)| (name, LazyTensor::from(t))).collect(),
        _ => return Err(ModelError::checkpoint(file, "not a checkpoint file: expected .safetensors, .ckpt, .pt or .pth")),
    };
    Ok(named.into_iter().collect())
}

/// Where a diffusers tensor lives in a single file.
#[derive(Debug, Clone)]
struct Slot {
    part: Part,
    name: String,
    reshape: Reshape,
}

/// The rules of each part of `networks` in the layout of `family`, with the part's prefix.
fn part_rules(family: Family, networks: &Networks) -> Result<Vec<(Part, &'static str, Rules)>, ModelError> {
    let mut out = Vec::new();
    for (part, _) in networks.parts() {
        let (prefix, layout) = family.layout(part);
        let rules = match part {
            Part::Unet => single_file_unet::rules(networks.unet.net.config())?,
            Part::Vae => single_file_vae::rules(networks.vae.net.config()),
            Part::TextEncoder => clip::rules(layout, networks.text_encoders[0].net.config()),
            Part::TextEncoder2 => clip::rules(layout, networks.text_encoders[1].net.config()),
        };
        out.push((part, prefix, rules));
    }
    Ok(out)
}

/// Every single-file key of `networks` in the layout of `family`, with the variables it holds
/// (three for a fused q/k/v, else one). A variable no rule covers, or two variables on one key,
/// would be a gap in the tables, reported rather than skipped.
fn key_map(family: Family, networks: &Networks) -> Result<BTreeMap<String, Vec<Slot>>, ModelError> {
    let mut map: BTreeMap<String, Vec<Slot>> = BTreeMap::new();
    for ((part, prefix, rules), (_, vars)) in part_rules(family, networks)?.into_iter().zip(networks.parts()) {
        for name in vars.variables().into_keys() {
            let (original, reshape) =
                rules.original(&name).ok_or_else(|| ModelError::Other(format!("{} `{name}` has no name in a {} single file", part.folder(), family.name())))?;
            map.entry(format!("{prefix}{original}")).or_default().push(Slot { part, name, reshape });
        }
    }
    for (key, slots) in map.iter_mut() {
        slots.sort_by_key(|s| s.reshape);
        let fused = slots.iter().any(|s| matches!(s.reshape, Reshape::Third(_)));
        let thirds = slots.iter().map(|s| s.reshape).eq((0..3).map(Reshape::Third));
        if (fused && !thirds) || (!fused && slots.len() > 1) {
            return Err(ModelError::Other(format!("`{key}` would hold {} tensors in a {} single file", slots.len(), family.name())));
        }
    }
    Ok(map)
}

/// Schedule buffers of CompVis' DDPM (and SGM's denoiser) that files carry but no network uses.
const SCHEDULE_BUFFERS: &[&str] = &[
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "logvar",
    "lvlb_weights",
    "denoiser.sigmas",
];

/// Tensors a single file may hold that the model has no place for, and that loading skips:
/// EMA copies (`model_ema.*`), schedule buffers, CLIP's derived `position_ids`, OpenCLIP's
/// `logit_scale`, and SD 2.x's last OpenCLIP layer and projection, which diffusers' text
/// encoder leaves out (SD 2.x conditions on the penultimate layer, so its config has one layer
/// fewer than the file, and it takes no pooled output).
fn ignorable(key: &str, family: Family, networks: &Networks) -> bool {
    if key.starts_with("model_ema.") || SCHEDULE_BUFFERS.contains(&key) || key.ends_with(".position_ids") || key.ends_with("model.logit_scale") {
        return true;
    }
    let Some(rest) = key.strip_prefix("cond_stage_model.model.").filter(|_| family == Family::Sd2) else {
        return false;
    };
    let config = networks.text_encoders[0].net.config();
    let extra_layer = format!("transformer.resblocks.{}.", config.num_hidden_layers);
    rest.starts_with(&extra_layer) || (rest == "text_projection" && !config.with_projection())
}

fn listed(names: &[&String]) -> String {
    let shown: Vec<&str> = names.iter().take(NAMES_SHOWN).map(|s| s.as_str()).collect();
    let more = names.len().saturating_sub(NAMES_SHOWN);
    let tail = if more > 0 { format!(" and {more} more") } else { String::new() };
    format!("`{}`{tail}", shown.join("`, `"))
}

/// One network's tensors by diffusers name, with the file they came from, as `load_strict` takes them.
type LoadTensors = HashMap<String, (LazyTensor, PathBuf)>;

/// `tensors` (a single file's) renamed and reshaped for each part's variables, after checking
/// that nothing is missing, nothing is left over and every shape fits; errors name `file`.
/// Nothing is read: the reshapes apply as each tensor is materialised.
fn diffusers_tensors(
    file: &Path,
    tensors: &HashMap<String, LazyTensor>,
    family: Family,
    networks: &Networks,
) -> Result<HashMap<Part, LoadTensors>, ModelError> {
    let map = key_map(family, networks)?;
    let missing: Vec<&String> = map.keys().filter(|k| !tensors.contains_key(*k)).collect();
    if !missing.is_empty() {
        return Err(ModelError::checkpoint(file, format!("{} tensor(s) the model needs are missing: {}", missing.len(), listed(&missing))));
    }
    let mut unexpected: Vec<&String> = tensors.keys().filter(|k| !map.contains_key(*k) && !ignorable(k, family, networks)).collect();
    unexpected.sort();
    if !unexpected.is_empty() {
        let (n, family, names) = (unexpected.len(), family.name(), listed(&unexpected));
        return Err(ModelError::checkpoint(file, format!("{n} tensor(s) have no place in the {family} model the config folder describes: {names}")));
    }
    let vars: HashMap<Part, HashMap<String, Tensor>> = networks.parts().into_iter().map(|(p, v)| (p, v.variables())).collect();
    let mut out: HashMap<Part, LoadTensors> = HashMap::new();
    for (key, slots) in &map {
        let tensor = &tensors[key];
        for slot in slots {
            let want = vars[&slot.part][&slot.name].size();
            if !slot.reshape.fits(&tensor.size(), &want) {
                let reason = format!(
                    "tensor `{key}` has shape {:?}, the model ({} `{}` of the config) expects {:?}",
                    tensor.size(),
                    slot.part.folder(),
                    slot.name,
                    slot.reshape.original_shape(&want)
                );
                return Err(ModelError::checkpoint(file, reason));
            }
            out.entry(slot.part).or_default().insert(slot.name.clone(), (to_diffusers(tensor, slot.reshape, want), file.to_path_buf()));
        }
    }
    Ok(out)
}

/// A file's tensor in diffusers' layout (its shape checked by [`Reshape::fits`]), computed when
/// it is materialised.
fn to_diffusers(t: &LazyTensor, reshape: Reshape, shape: Vec<i64>) -> LazyTensor {
    match reshape {
        Reshape::Same => t.clone(),
        Reshape::Conv1x1 => t.derived(shape.clone(), move |t| t.reshape(&shape)),
        Reshape::Transpose => t.derived(shape, |t| t.tr().contiguous()),
        Reshape::Third(n) => {
            let rows = shape[0];
            t.derived(shape, move |t| t.narrow(0, i64::from(n) * rows, rows).contiguous())
        }
    }
}

/// The tensors of one single-file key from the variables it holds (in `Reshape` order).
fn to_original(tensors: &[(Reshape, Tensor)]) -> Tensor {
    match tensors {
        [(Reshape::Conv1x1, t)] => t.unsqueeze(-1).unsqueeze(-1),
        [(Reshape::Transpose, t)] => t.tr().contiguous(),
        [(_, t)] => t.shallow_clone(),
        thirds => Tensor::cat(&thirds.iter().map(|(_, t)| t.shallow_clone()).collect::<Vec<_>>(), 0),
    }
}

impl Networks {
    /// The networks `config_dir` describes, loaded from single file `file`: all of them, or
    /// none (every tensor is checked before any is copied). The family the file shows must
    /// match the folder's (SDXL with two text encoders, the others with one).
    pub fn load_single_file(file: &Path, config_dir: &Path, device: Device) -> Result<(Family, Networks), ModelError> {
        let tensors = read_checkpoint_lazy(file)?;
        let family = Family::detect(file, tensors.keys())?;
        let networks = Networks::build(config_dir, device)?;
        if (family == Family::Sdxl) != (networks.text_encoders.len() == 2) {
            let folder = if networks.text_encoders.len() == 2 { "an SDXL" } else { "an SD 1.x/2.x" };
            let reason = format!("the file holds {} weights, but the config folder {} is {folder} model", family.name(), config_dir.display());
            return Err(ModelError::checkpoint(file, reason));
        }
        Ok((family, networks.filled_from(file, &tensors, family)?))
    }

    /// The networks of the preset of the family the file's keys show (`sd15`, `sd21`, `sdxl`),
    /// loaded from it; for files of the published architectures, which need no config folder.
    pub fn load_single_file_preset(file: &Path, device: Device) -> Result<(Family, SdPreset, Networks), ModelError> {
        let tensors = read_checkpoint_lazy(file)?;
        let family = Family::detect(file, tensors.keys())?;
        let preset = SdPreset::named(family.preset())?;
        let networks = Networks::from_preset(&preset, device)?.filled_from(file, &tensors, family).map_err(|e| {
            let hint = format!(
                "{e} (its keys show {}; it was read as the published {} architecture: for another architecture pass --config with a diffusers folder of it)",
                family.name(),
                preset.name
            );
            ModelError::Other(hint)
        })?;
        Ok((family, preset, networks))
    }

    /// These networks with `tensors` (a single file's, of `family`) in them: all or none.
    fn filled_from(mut self, file: &Path, tensors: &HashMap<String, LazyTensor>, family: Family) -> Result<Networks, ModelError> {
        let mut mapped = diffusers_tensors(file, tensors, family, &self)?;
        for (part, vars) in self.parts() {
            load_strict(vars, &mapped.remove(&part).unwrap_or_default(), file)?;
        }
        self.freeze_conditioning();
        Ok(self)
    }

    /// The tensors of a single file of `family` for these networks, by original name, in
    /// `kind` (float32 or float16).
    pub fn single_file_tensors(&self, family: Family, kind: Kind) -> Result<Vec<(String, Tensor)>, ModelError> {
        let map = key_map(family, self)?;
        let vars: HashMap<Part, HashMap<String, Tensor>> =
            self.parts().into_iter().map(|(p, v)| (p, sorted_variables(v, Some(kind)).into_iter().collect())).collect();
        Ok(map
            .into_iter()
            .map(|(key, slots)| {
                let parts: Vec<(Reshape, Tensor)> = slots.iter().map(|s| (s.reshape, vars[&s.part][&s.name].shallow_clone())).collect();
                (key, to_original(&parts).contiguous())
            })
            .collect())
    }

    /// Writes one `.safetensors` file with the original names (see [`Networks::single_file_tensors`])
    /// at `out`, which must not exist: written under a temporary name, synced and renamed.
    pub fn write_single_file(&self, family: Family, out: &Path, kind: Kind) -> Result<(), ModelError> {
        refuse_existing(out)?;
        let tensors = self.single_file_tensors(family, kind)?;
        let tmp = temporary_sibling(out)?;
        let result = write_tensors(&tensors, &tmp).and_then(|()| {
            refuse_existing(out)?;
            std::fs::rename(&tmp, out).map_err(|e| ModelError::io(out, e))
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

impl StableDiffusion {
    /// A single-file checkpoint with `config_dir` (a diffusers folder) for the networks'
    /// configs, the tokenizers and the scheduler (whose prediction type decides epsilon or
    /// v-prediction); see [`Networks::load_single_file`].
    pub fn load_single_file(file: &Path, config_dir: &Path, device: Device) -> Result<StableDiffusion, ModelError> {
        let (_, networks) = Networks::load_single_file(file, config_dir, device)?;
        let mut sd = StableDiffusion::from_networks(config_dir, networks, device)?;
        sd.dir = file.to_path_buf();
        Ok(sd)
    }

    /// A single-file checkpoint of a published architecture on its own: the preset of its
    /// family, CLIP's built-in tokenizer(s) and Stable Diffusion's DDIM settings with the
    /// preset's prediction type unless `prediction` (diffusers' name) says otherwise.
    pub fn load_single_file_preset(file: &Path, prediction: Option<&str>, device: Device) -> Result<StableDiffusion, ModelError> {
        let (family, preset, networks) = Networks::load_single_file_preset(file, device)?;
        // SD 1.x and SDXL's first encoder pad with the end token, OpenCLIP's encoders with "!".
        let pads: &[EmbeddedPad] = match family {
            Family::Sd1 => &[EmbeddedPad::EndToken],
            Family::Sd2 => &[EmbeddedPad::Bang],
            Family::Sdxl => &[EmbeddedPad::EndToken, EmbeddedPad::Bang],
        };
        let tokenizers = pads.iter().map(|&pad| ClipTokenizer::embedded(pad)).collect::<Result<Vec<_>, _>>()?;
        let scheduler = SchedulerConfig::stable_diffusion(prediction.unwrap_or(preset.prediction_type));
        let scheduling = scheduler.scheduling(Path::new("--prediction"))?;
        let parts = Parts { networks, tokenizers, scheduling, force_zeros_for_empty_prompt: None };
        Ok(StableDiffusion::assemble(file.to_path_buf(), parts, device))
    }
}
