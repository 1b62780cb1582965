//! A Stable Diffusion LoRA file merged into its base for good (kohya's `networks/merge_lora.py`,
//! diffusers' `fuse_lora` + `save_pretrained`): every module the file adapts gets
//! W += scale x update, and the result is written as a diffusers folder or as one single file,
//! which every tool loads without knowing about LoRA.

use super::components::Networks;
use super::lora_file::{self, LoraReport};
use super::pipeline::is_diffusers_folder;
use super::single_file::Family;
use crate::error::ModelError;
use difforge_core::ConfigError;
use std::path::Path;
use tch::{Device, Kind};

/// How the merged model is written, from `--out`'s name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergedLayout {
    /// A diffusers folder (float32): the base folder's configs, tokenizers and scheduler.
    Folder,
    /// One `.safetensors` file in the original (CompVis/SGM) layout, in `kind`.
    SingleFile(Kind),
}

impl MergedLayout {
    /// A `.safetensors` name is a single file (float16 with `half`), anything else a folder.
    pub fn of(out: &Path, half: bool) -> Result<MergedLayout, ConfigError> {
        let file = out.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
        match (file, half) {
            (true, half) => Ok(MergedLayout::SingleFile(if half { Kind::Half } else { Kind::Float })),
            (false, false) => Ok(MergedLayout::Folder),
            (false, true) => Err(ConfigError::problem("--half", "only with a .safetensors --out (diffusers folders are written in float32)")),
        }
    }
}

/// Merges the LoRA file `lora` at `scale` into `base` (a diffusers folder, or a single file of a
/// published architecture) and writes the result to `out`, which must not exist (it is written
/// under a temporary name and renamed). Nothing is written when the file does not fit the base.
pub fn merge_into_base(base: &Path, lora: &Path, scale: f64, out: &Path, layout: MergedLayout) -> Result<LoraReport, ModelError> {
    if out.exists() {
        return Err(ConfigError::new("--out", out.display(), "a path that does not exist yet (nothing is overwritten)").into());
    }
    let folder = is_diffusers_folder(base);
    if !folder && layout == MergedLayout::Folder {
        let hint = "a .safetensors --out: a single-file base has no folder whose configs a diffusers folder needs (or convert the base first: difforge convert --from FILE --to diffusers --config DIR --out FOLDER)";
        return Err(ConfigError::new("--out", out.display(), hint).into());
    }
    let networks = if folder { Networks::load_diffusers(base, Device::Cpu)? } else { Networks::load_single_file_preset(base, Device::Cpu)?.2 };
    let report = lora_file::apply(lora, scale, &networks.parts())?;
    match layout {
        MergedLayout::Folder => networks.write_diffusers(base, out)?,
        MergedLayout::SingleFile(kind) => networks.write_single_file(Family::of(&networks), out, kind)?,
    }
    Ok(report)
}
