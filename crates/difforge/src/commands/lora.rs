//! `difforge lora export`: a Stable Diffusion LoRA file rewritten in the other layout (kohya's
//! `lora_unet_…` for the webui and ComfyUI, diffusers' `unet.….lora_A` for `load_lora_weights`),
//! with the same updates; the base model resolves kohya's underscore names to modules.

use difforge_core::ConfigError;
use difforge_model::stable_diffusion::{LoraFormat, StableDiffusion};
use std::path::Path;

pub fn export(base: &Path, lora: &Path, format: &str, out: &Path) -> anyhow::Result<()> {
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
    let model =
        if base.is_dir() { StableDiffusion::load(base, tch::Device::Cpu)? } else { StableDiffusion::load_single_file_preset(base, None, tch::Device::Cpu)? };
    let modules = model.convert_lora(lora, format, out)?;
    println!("{} -> {} ({} layout, {modules} modules)", lora.display(), out.display(), format.name());
    Ok(())
}
