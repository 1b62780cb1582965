//! `difforge lora export`: a Stable Diffusion LoRA file rewritten in the other layout (kohya's
//! `lora_unet_…` for the webui and ComfyUI, diffusers' `unet.….lora_A` for `load_lora_weights`),
//! with the same updates; the base model resolves kohya's underscore names to modules. And
//! `difforge lora merge` of such a file into its base.

use difforge_core::ConfigError;
use difforge_model::stable_diffusion::lora_merge::{merge_into_base, MergedLayout};
use difforge_model::stable_diffusion::{LoraFormat, StableDiffusion};
use std::path::Path;

/// `difforge lora merge --base <SD folder or file>`: the merged model as a diffusers folder, or a
/// single file when `out` ends in .safetensors.
pub fn merge_into_stable_diffusion(base: &Path, lora: &Path, scale: f64, out: &Path, half: bool) -> anyhow::Result<()> {
    let layout = MergedLayout::of(out, half)?;
    let report = merge_into_base(base, lora, scale, out, layout)?;
    let written = match layout {
        MergedLayout::Folder => "a diffusers folder",
        MergedLayout::SingleFile(tch::Kind::Half) => "a single file, float16",
        MergedLayout::SingleFile(_) => "a single file",
    };
    println!("merged {report} into {} -> {} ({written})", base.display(), out.display());
    Ok(())
}

pub fn export(base: &Path, lora: &Path, format: &str, out: &Path, overwrite: bool) -> anyhow::Result<()> {
    let format = match format {
        "kohya" => LoraFormat::Kohya,
        "diffusers" | "peft" => LoraFormat::Diffusers,
        other => return Err(ConfigError::new("--format", other, "kohya, or diffusers (also peft)").into()),
    };
    if out.extension().is_none_or(|e| e != "safetensors") {
        return Err(ConfigError::new("--out", out.display(), "a .safetensors file").into());
    }
    if out == lora {
        return Err(ConfigError::new("--out", out.display(), "another file than --lora (the input is read while the output is written)").into());
    }
    if out.exists() && !overwrite {
        return Err(ConfigError::new("--out", out.display(), "a file that does not exist yet (or pass --overwrite to replace it)").into());
    }
    let model =
        if base.is_dir() { StableDiffusion::load(base, tch::Device::Cpu)? } else { StableDiffusion::load_single_file_preset(base, None, tch::Device::Cpu)? };
    let modules = model.convert_lora(lora, format, out)?;
    println!("{} -> {} ({} layout, {modules} modules)", lora.display(), out.display(), format.name());
    Ok(())
}
