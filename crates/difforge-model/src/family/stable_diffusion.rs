//! Stable Diffusion as a training family: a published diffusers folder (`model.base`) whose
//! UNet trains (all of it, or LoRA adapters on its attention, projections, feed-forward layers
//! and convolutions) while the VAE stays frozen, and the CLIP text encoder too unless it trains
//! (`model.train_text_encoder`) or carries adapters (`lora.text_encoder`). Captions become the encoder's hidden states; images become
//! the VAE's latents; an empty caption is the null conditioning guidance needs (as SD was
//! trained). SD 1.x, 2.x and SDXL (both encoders, the pooled embedding and size ids of the
//! training size; see `sd_text`).

use super::latent_cache::LatentCache;
use super::sd_text::TextEncoders;
use super::sd_unet::{SdTextUnet, SdUnet, TEXT_ENCODER_PREFIX};
use super::vae_codec::VaeCodec;
use super::{Condition, ConditionKind, Export, Family};
use crate::codec::Codec;
use crate::error::ModelError;
use crate::stable_diffusion::components::{has_second_text_encoder, Networks, Part};
use crate::stable_diffusion::lora_export::{self, LoraExport, NetworkAdapters};
use crate::stable_diffusion::single_file::Family as SingleFileFamily;
use crate::stable_diffusion::single_file_base::base_folder;
use crate::stable_diffusion::{is_diffusers_folder, LoraFormat, SchedulerConfig};
use difforge_config::{ExportFormat, RunConfig, StableDiffusionConfig};
use difforge_core::{ConfigError, StreamRng};
use difforge_data::check::TokenCounter;
use difforge_data::{Batch, ImageSet, Placement};
use difforge_diffusion::{DiffusionConfig, NoiseSchedule};
use difforge_nn::lora::{is_lora_variable, LoraTarget};
use difforge_nn::sd::autoencoder_kl::AutoencoderKl;
use difforge_nn::sd::load::{load_strict_except, read_config, read_tensors, weight_files};
use difforge_nn::sd::tokenizer::ClipTokenizer;
use difforge_nn::sd::unet_2d_condition::UNet2DConditionModel;
use difforge_nn::sd::unet_config::{PerLevel, UNet2DConditionConfig};
use difforge_nn::sd::{ClipTextConfig, ClipTextModel};
use difforge_nn::{Conditioning, DenoiserNet, LoraConfig, LoraSpec};
use rand::seq::SliceRandom;
use rand::Rng;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tch::{nn, Device, Tensor};

/// The text side: frozen encoders the family runs on captions, or (`train_text_encoder`,
/// `lora.text_encoder`) the config of the encoder the network holds and trains (all of it or
/// its adapters), which takes token ids.
enum TextSide {
    Frozen(Mutex<TextEncoders>),
    Trained(ClipTextConfig),
}

pub struct StableDiffusionFamily {
    config: StableDiffusionConfig,
    /// The diffusers folder the base is read from: `config.base`, or its conversion when that is
    /// a single file (see `single_file_base`).
    base: PathBuf,
    unet: UNet2DConditionConfig,
    text: TextSide,
    vae: Arc<Mutex<AutoencoderKl>>,
    cache: Option<Arc<LatentCache>>,
    /// The (first) tokenizer again, outside the lock, for the data check's token counts.
    tokenizer: Arc<ClipTokenizer>,
    /// Image sides are multiples of this: the VAE's scale times the UNet's downsamplings.
    size_step: i64,
}

fn base_err(base: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::Config(ConfigError::new("model.base", base.display(), reason.into()))
}

/// The base's frozen text encoder(s), which encode every step's captions.
fn frozen_text(base: &Path, config: &StableDiffusionConfig, device: Device) -> Result<TextSide, ModelError> {
    // Dropout and shuffling change captions from step to step; encoding each step's captions
    // keeps every variant exact (no text cache to go stale).
    tracing::debug!("captions are encoded by the frozen text encoder at each step{}", if config.shuffle_caption { ", after shuffling their tags" } else { "" });
    Ok(TextSide::Frozen(Mutex::new(TextEncoders::load(base, config.clip_skip, config.image_size, device)?)))
}

/// The config of the base's text encoder, which the network will hold and train (all of it,
/// or its LoRA adapters: `key` is the setting that asked, for errors).
fn trained_text_config(base: &Path, clip_skip: usize, key: &str) -> Result<ClipTextConfig, ModelError> {
    if has_second_text_encoder(base)? {
        return Err(ConfigError::new(key, true, "false for SDXL bases (training both text encoders is not implemented)").into());
    }
    let dir = base.join("text_encoder");
    let config: ClipTextConfig = read_config(&dir)?;
    config.validate().map_err(|e| ModelError::checkpoint(dir.join("config.json"), e.to_string()))?;
    if clip_skip as i64 >= config.num_hidden_layers {
        return Err(ConfigError::new("model.clip_skip", clip_skip, format!("less than the text encoder's {} layers", config.num_hidden_layers)).into());
    }
    tracing::info!("the text encoder ({key}) trains with the UNet: captions become token ids the network encodes");
    Ok(config)
}

impl StableDiffusionFamily {
    /// Loads the base's text encoder, tokenizer and VAE onto `device` and checks the run's
    /// `[diffusion]` section and image size against the base.
    pub fn load(run: &RunConfig, config: &StableDiffusionConfig, device: Device) -> Result<StableDiffusionFamily, ModelError> {
        if config.new.is_some() && config.base.as_os_str().is_empty() {
            let made_by = "a base written first: `difforge train` makes a [model.new] model (VAE, then UNet and text encoder)";
            return Err(ConfigError::problem("model.new", made_by).into());
        }
        let base = &base_folder(config)?;
        if !is_diffusers_folder(base) {
            let expected = "a diffusers Stable Diffusion folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/) or a single .safetensors/.ckpt file";
            return Err(base_err(base, expected));
        }
        check_schedule(base, &run.diffusion)?;
        let unet: UNet2DConditionConfig = read_config(&base.join("unet"))?;
        let vae = AutoencoderKl::load(&base.join("vae"), device)?;
        let size_step = vae.downscale() << (unet.block_out_channels.len().max(1) - 1);
        if config.image_size % size_step != 0 {
            return Err(ConfigError::new(
                "model.image_size",
                config.image_size,
                format!("a multiple of {size_step} (the VAE's scale times the UNet's downsamplings)"),
            )
            .into());
        }
        if let Some(l) = &run.lora {
            check_lora(l)?;
        }
        let cache = match &config.cache_dir {
            Some(root) => Some(Arc::new(open_cache(root, &base.join("vae"))?)),
            None => None,
        };
        // Adapters on the text encoder need its forward inside the trained network too, so
        // that gradients reach them (the base weights stay frozen: only adapters train).
        let text_key = match &run.lora {
            Some(l) if l.text_encoder => Some("lora.text_encoder"),
            _ => config.train_text_encoder.then_some("model.train_text_encoder"),
        };
        let text = match text_key {
            Some(key) => TextSide::Trained(trained_text_config(base, config.clip_skip, key)?),
            None => frozen_text(base, config, device)?,
        };
        let tokenizer = Arc::new(ClipTokenizer::load(base.join("tokenizer"))?);
        Ok(StableDiffusionFamily { config: config.clone(), base: base.clone(), unet, text, vae: Arc::new(Mutex::new(vae)), cache, tokenizer, size_step })
    }

    fn encode_texts(&self, texts: &[&str], device: Device) -> Result<Conditioning, ModelError> {
        match &self.text {
            TextSide::Frozen(encoders) => {
                let encoders = encoders.lock().unwrap_or_else(|p| p.into_inner());
                Ok(Conditioning::Text(encoders.encode(texts, device)?))
            }
            TextSide::Trained(config) => {
                // Checked here, on the host, because the encoder does not read ids already on a GPU.
                let ids = self.tokenizer.encode_batch(texts)?;
                config.check_token_ids(&ids)?;
                Ok(Conditioning::Tokens(ids.to_device(device)))
            }
        }
    }

    /// Conditioning of captions (None: the empty caption).
    fn captions(&self, captions: &[Option<&str>], device: Device) -> Conditioning {
        let texts: Vec<&str> = captions.iter().map(|c| c.unwrap_or("")).collect();
        // The tokenizer truncates and the encoder takes any ids it yields, so this cannot fail
        // on a caption; a failure is a broken base, which loading has already read.
        self.encode_texts(&texts, device).expect("the base's text encoder encodes its tokenizer's ids")
    }
}

impl StableDiffusionFamily {
    /// kohya's `ss_base_model_version` of the base: SDXL by its added conditioning, SD 2.x by its
    /// 1024-wide text states (OpenCLIP ViT-H), else SD 1.x.
    fn base_model_version(&self) -> &'static str {
        if self.unet.addition_embed_type.is_some() {
            "sdxl_base_v1-0"
        } else if matches!(&self.unet.cross_attention_dim, PerLevel::One(1024)) {
            "sd_v2"
        } else {
            "sd_v1"
        }
    }

    /// A full fine-tune written in `formats`: the base as a diffusers folder (`dir/diffusers`)
    /// and/or one single file (`dir/model.safetensors`, float32), with the trained weights in
    /// place of its UNet's (and text encoder's); each replaces what an earlier end of the same
    /// run wrote.
    fn export_model(&self, trained: &[(String, Tensor)], formats: &[ExportFormat], dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
        let networks = self.trained_networks(trained)?;
        let mut written = Vec::new();
        for format in formats {
            let out = match format {
                ExportFormat::Diffusers => dir.join("diffusers"),
                ExportFormat::SingleFile => dir.join("model.safetensors"),
            };
            if out.is_dir() {
                std::fs::remove_dir_all(&out).map_err(|e| ModelError::io(&out, e))?;
            } else if out.exists() {
                std::fs::remove_file(&out).map_err(|e| ModelError::io(&out, e))?;
            }
            match format {
                ExportFormat::Diffusers => networks.write_diffusers(&self.base, &out)?,
                ExportFormat::SingleFile => networks.write_single_file(SingleFileFamily::of(&networks), &out, tch::Kind::Float)?,
            }
            written.push(out);
        }
        Ok(written)
    }

    /// The base's networks with the trained weights in place of its UNet's (and text
    /// encoder's, `text_encoder.`-prefixed), on the CPU.
    fn trained_networks(&self, trained: &[(String, Tensor)]) -> Result<Networks, ModelError> {
        let networks = Networks::load_diffusers(&self.base, Device::Cpu)?;
        let unet_vars = networks.unet.vars.variables();
        let text_vars = networks.text_encoders[0].vars.variables();
        tch::no_grad(|| {
            for (name, t) in trained {
                let (vars, key, part) = match name.strip_prefix(TEXT_ENCODER_PREFIX) {
                    Some(key) => (&text_vars, key, "text encoder"),
                    None => (&unet_vars, name.as_str(), "UNet"),
                };
                let var = vars.get(key).ok_or_else(|| ModelError::Other(format!("the trained {part} has a variable `{key}` the base lacks")))?;
                var.shallow_clone().copy_(&t.to_device(Device::Cpu));
            }
            Ok::<(), ModelError>(())
        })?;
        Ok(networks)
    }
}

/// A file's name, size and the SHA-256 of its first and last MiB.
pub(crate) fn fingerprint_file(path: &Path) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    const MIB: u64 = 1 << 20;
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let mut head = Vec::new();
    (&mut file).take(MIB).read_to_end(&mut head)?;
    let mut tail = Vec::new();
    file.seek(SeekFrom::Start(size.saturating_sub(MIB)))?;
    file.take(MIB).read_to_end(&mut tail)?;
    let name = path.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned());
    Ok(format!("{name}:{size}:{}:{};", difforge_core::sha256_hex(&head), difforge_core::sha256_hex(&tail)))
}

/// The latent cache of the VAE in `vae_dir` under `root`.
fn open_cache(root: &Path, vae_dir: &Path) -> Result<LatentCache, ModelError> {
    let mut files = weight_files(vae_dir, "diffusion_pytorch_model", None)?;
    files.push(vae_dir.join("config.json"));
    LatentCache::open(root, &files).map_err(|e| ConfigError::new("model.cache_dir", root.display(), format!("a folder difforge can write ({e})")).into())
}

/// SDXL's size and crop conditioning of bucketed images: each image's original size, crop and
/// bucket (`add_time_ids`, as kohya's sd-scripts records them) in place of the training size's.
/// Conditioning without size ids (SD 1.x/2.x) and square crops (no placements) pass unchanged.
fn with_crop_conditioning(cond: Conditioning, placements: &[Placement]) -> Conditioning {
    match cond {
        Conditioning::Text(mut text) if text.time_ids.is_some() && !placements.is_empty() => {
            let ids: Vec<f32> = placements.iter().flat_map(|p| p.sdxl_time_ids().map(|v| v as f32)).collect();
            let device = text.hidden.device();
            text.time_ids = Some(Tensor::from_slice(&ids).view([placements.len() as i64, 6]).to_device(device));
            Conditioning::Text(text)
        }
        other => other,
    }
}

/// The caption's comma-separated tags in a random order, the first `keep` in place.
fn shuffle_tags(caption: &str, keep: usize, rng: &mut StreamRng) -> String {
    let mut tags: Vec<&str> = caption.split(',').map(str::trim).filter(|t| !t.is_empty()).collect();
    let keep = keep.min(tags.len());
    tags[keep..].shuffle(rng);
    tags.join(", ")
}

/// The targets the UNet's adapters can have: every one but "embedding" (the SD UNet's time
/// embedding takes no adapters). Dropout needs nothing here: every adapted layer applies it.
fn check_lora(l: &LoraConfig) -> Result<(), ConfigError> {
    if let Some(t) = l.targets.iter().find(|t| **t == LoraTarget::Embedding) {
        return Err(ConfigError::new(
            "lora.targets",
            t.name(),
            "some of \"attention\", \"projection\", \"feed_forward\", \"conv\" for stable-diffusion models",
        ));
    }
    Ok(())
}

/// The run must diffuse as the base was trained: same betas, timesteps and target.
fn check_schedule(base: &Path, d: &DiffusionConfig) -> Result<(), ModelError> {
    let dir = base.join("scheduler");
    check_schedule_of(&SchedulerConfig::read(&dir)?, &dir.join("scheduler_config.json"), d)
}

/// Checks `[diffusion]` against a scheduler config (read from `file`, or to be written there).
pub(crate) fn check_schedule_of(cfg: &SchedulerConfig, file: &Path, d: &DiffusionConfig) -> Result<(), ModelError> {
    let scheduling = cfg.scheduling(file)?;
    let theirs = (&scheduling.schedule, scheduling.prediction);
    if (&NoiseSchedule::from_config(d), d.prediction) != theirs {
        let prediction = match cfg.prediction_type.as_str() {
            "v_prediction" => "v",
            "sample" => "x0",
            other => other,
        };
        let want = format!(
            "the base's schedule ({}): [diffusion] schedule = \"{}\", timesteps = {}, beta_start = {}, beta_end = {}, prediction = \"{prediction}\", zero_terminal_snr = {}",
            file.display(),
            cfg.beta_schedule,
            cfg.num_train_timesteps,
            cfg.beta_start,
            cfg.beta_end,
            cfg.rescale_betas_zero_snr
        );
        return Err(ConfigError::new("diffusion", format!("schedule = \"{}\", prediction = \"{}\"", d.schedule.name(), d.prediction.name()), want).into());
    }
    Ok(())
}

impl Family for StableDiffusionFamily {
    fn name(&self) -> &'static str {
        "stable-diffusion"
    }

    fn pixel_shape(&self) -> [i64; 3] {
        [3, self.config.image_size, self.config.image_size]
    }

    /// The VAE's scale times the UNet's downsamplings; SDXL conditions on the image size, which
    /// the family fixes at the trained size, so an SDXL model keeps that size.
    fn size_multiple(&self) -> Option<i64> {
        self.unet.addition_embed_type.is_none().then_some(self.size_step)
    }

    /// Every SD model (SDXL too) trains at any multiple of its size step.
    fn bucket_step(&self) -> Option<i64> {
        Some(self.size_step)
    }

    fn condition_kind(&self) -> ConditionKind {
        ConditionKind::Text
    }

    fn build_network(&self, p: &nn::Path, lora: Option<&LoraSpec>) -> Result<Box<dyn DenoiserNet>, ModelError> {
        let unet = UNet2DConditionModel::with_lora(p, &self.unet, lora)?;
        match &self.text {
            TextSide::Frozen(_) => Ok(Box::new(SdUnet(unet))),
            TextSide::Trained(config) => {
                let text_lora = lora.filter(|l| l.config.text_encoder);
                let text = ClipTextModel::with_lora(&(p / TEXT_ENCODER_PREFIX.trim_end_matches('.')), config, text_lora)?;
                Ok(Box::new(SdTextUnet { text, unet, clip_skip: self.config.clip_skip }))
            }
        }
    }

    /// The base's UNet weights (and text encoder's, when it trains too); the adapters keep their
    /// initialisation (up = 0: the adapted network starts as the base).
    fn init_network(&self, vs: &nn::VarStore) -> Result<(), ModelError> {
        let dir = self.base.join("unet");
        let tensors = read_tensors(&weight_files(&dir, "diffusion_pytorch_model", None)?)?;
        load_strict_except(vs, &tensors, &dir, |name| is_lora_variable(name) || name.starts_with(TEXT_ENCODER_PREFIX))?;
        if let TextSide::Trained(_) = self.text {
            let dir = self.base.join("text_encoder");
            let tensors = difforge_nn::sd::clip_text::read_weights(&dir, None)?;
            let prefixed = tensors.into_iter().map(|(name, t)| (format!("{TEXT_ENCODER_PREFIX}{name}"), t)).collect();
            load_strict_except(vs, &prefixed, &dir, |name| !name.starts_with(TEXT_ENCODER_PREFIX) || is_lora_variable(name))?;
        }
        Ok(())
    }

    fn codec(&self) -> Box<dyn Codec> {
        Box::new(VaeCodec::new(self.vae.clone(), self.cache.clone()))
    }

    fn encode(&self, conditions: &[Condition], device: Device) -> Result<(Conditioning, Option<Conditioning>), ModelError> {
        let mut texts = Vec::with_capacity(conditions.len());
        for c in conditions {
            match c {
                Condition::Text(t) => texts.push(t.as_str()),
                Condition::Unconditional => texts.push(""),
                Condition::Class(k) => return Err(ConfigError::new("class", k, "nothing: this model is conditioned on text (give a prompt)").into()),
            }
        }
        let empty = vec![""; texts.len()];
        Ok((self.encode_texts(&texts, device)?, Some(self.encode_texts(&empty, device)?)))
    }

    /// Each caption dropped to the empty one with probability `dropout`, else (with
    /// `shuffle_caption`) its tags shuffled (the image's subset may say otherwise); both drawn
    /// from the step's stream, so a resumed run sees the same captions.
    fn training_conditioning(&self, batch: &Batch, dropout: f64, rng: &mut StreamRng, device: Device) -> Conditioning {
        let mut captions: Vec<Option<String>> = Vec::with_capacity(batch.captions.len());
        for (i, caption) in batch.captions.iter().enumerate() {
            // An image's subset may set its own dropout, shuffling and kept tags.
            let rule = batch.caption_rules.get(i).copied().unwrap_or_default();
            let (shuffle, keep) = (rule.shuffle.unwrap_or(self.config.shuffle_caption), rule.keep_tokens.unwrap_or(self.config.keep_tokens));
            let kept = caption.as_deref().filter(|_| !rng.random_bool(rule.dropout.unwrap_or(dropout)));
            captions.push(kept.map(|c| if shuffle { shuffle_tags(c, keep, rng) } else { c.to_string() }));
        }
        let captions: Vec<Option<&str>> = captions.iter().map(|c| c.as_deref()).collect();
        with_crop_conditioning(self.captions(&captions, device), &batch.placements)
    }

    fn fixed_conditioning(&self, _labels: &[i64], captions: &[Option<String>]) -> Conditioning {
        let captions: Vec<Option<&str>> = captions.iter().map(|c| c.as_deref()).collect();
        self.captions(&captions, Device::Cpu)
    }

    fn check_data(&self, set: &ImageSet) -> Result<Vec<String>, ConfigError> {
        let missing = set.captions.iter().filter(|c| c.is_none()).count();
        if !set.is_empty() && missing == set.len() {
            return Err(ConfigError::problem(
                "data.path",
                "no image has a caption: a stable-diffusion model trains on captioned images (.txt sidecars, metadata.jsonl or metadata.csv)",
            ));
        }
        Ok(if missing > 0 { vec![format!("{missing} of {} images have no caption: they train with the empty prompt", set.len())] } else { Vec::new() })
    }

    fn start_from_base(&self, name: &str, base: &Tensor, var: &Tensor, path: &Path) -> Result<Tensor, ModelError> {
        if base.size() != var.size() {
            return Err(ModelError::checkpoint(path, format!("tensor `{name}` has shape {:?} in the base, the model expects {:?}", base.size(), var.size())));
        }
        Ok(base.shallow_clone())
    }

    fn adapter_carries(&self, _lora: &LoraConfig, name: &str) -> bool {
        is_lora_variable(name)
    }

    fn preview_prompts(&self) -> Vec<String> {
        if self.config.preview_prompts.is_empty() {
            vec![String::new()]
        } else {
            self.config.preview_prompts.clone()
        }
    }

    fn base_folder(&self) -> Option<PathBuf> {
        Some(self.base.clone())
    }

    /// The UNet weight files' names and sizes and the SHA-256 of their first and last MiB: it
    /// catches a replaced or re-saved base without reading gigabytes at every load.
    /// The text encoder's files count too when the network holds it (adapters on it, or all of
    /// it trained).
    fn base_fingerprint(&self) -> Result<Option<String>, ModelError> {
        let mut files = weight_files(&self.base.join("unet"), "diffusion_pytorch_model", None)?;
        if let TextSide::Trained(_) = self.text {
            files.extend(weight_files(&self.base.join("text_encoder"), "model", None)?);
        }
        let mut parts = String::new();
        for file in files {
            parts.push_str(&fingerprint_file(&file).map_err(|e| ModelError::io(&file, e))?);
        }
        Ok(Some(difforge_core::sha256_hex(parts.as_bytes())))
    }

    fn caption_tokens(&self) -> Option<TokenCounter> {
        let tokenizer = self.tokenizer.clone();
        Some(TokenCounter::new(move |caption| tokenizer.inner().encode(caption, false).map_or(0, |e| e.get_ids().len())))
    }

    /// LoRA adapters as kohya's layout (`lora.safetensors`, what the webui and ComfyUI load)
    /// and diffusers' (`pytorch_lora_weights.safetensors`, `load_lora_weights`' default name);
    /// a full fine-tune as a diffusers folder (`diffusers/`: the base with the trained UNet).
    fn export_trained(&self, trained: &[(String, Tensor)], export: &Export, dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
        let Some(lora) = export.lora else {
            return self.export_model(trained, export.formats, dir);
        };
        let record = export.record;
        let (text, unet) = lora_export::split_prefixed(trained, TEXT_ENCODER_PREFIX);
        let mut networks = vec![NetworkAdapters { part: Part::Unet, variables: &unet }];
        if !text.is_empty() {
            networks.push(NetworkAdapters { part: Part::TextEncoder, variables: &text });
        }
        // The model as the user named it (a single file's name, not its cached conversion).
        let base = self.config.base.display().to_string();
        let mut metadata = vec![
            ("ss_sd_model_name".into(), base),
            ("ss_base_model_version".into(), self.base_model_version().into()),
            ("ss_output_name".into(), lora.output_name.clone()),
            ("ss_training_comment".into(), "difforge".into()),
        ];
        metadata.extend(record.iter().cloned());
        let export = LoraExport { rank: lora.rank, alpha: lora.alpha, metadata };
        let kohya = format!("{}.safetensors", lora.output_name);
        let mut written = Vec::new();
        for (format, name) in [(LoraFormat::Kohya, kohya.as_str()), (LoraFormat::Diffusers, "pytorch_lora_weights.safetensors")] {
            let path = dir.join(name);
            lora_export::export(&path, format, &networks, &export)?;
            written.push(path);
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn bucketed_sdxl_images_are_conditioned_on_their_own_size_and_crop() {
        use difforge_data::bucket::Bucket;
        let text = |ids: Option<Tensor>| {
            Conditioning::Text(difforge_nn::TextConditioning {
                hidden: Tensor::zeros([2, 3, 4], (tch::Kind::Float, Device::Cpu)),
                mask: None,
                pooled: None,
                time_ids: ids,
            })
        };
        let placement = |w, h, left, top| Placement { bucket: Bucket::new(40, 24), original: (w, h), resized: (48, 24), crop_left: left, crop_top: top };
        let placements = [placement(64, 32, 8, 0), placement(100, 50, 3, 0)];
        let trained_size = Tensor::from_slice(&[32f32, 32.0, 0.0, 0.0, 32.0, 32.0]).unsqueeze(0).repeat([2, 1]);
        let Conditioning::Text(out) = with_crop_conditioning(text(Some(trained_size)), &placements) else { unreachable!() };
        let ids = Vec::<f32>::try_from(out.time_ids.unwrap().view([-1])).unwrap();
        // (original h, w, crop top, left, target h, w) per image.
        assert_eq!(ids, [32.0, 64.0, 0.0, 8.0, 24.0, 40.0, 50.0, 100.0, 0.0, 3.0, 24.0, 40.0]);
        // SD 1.x/2.x conditioning has no size ids and stays as it is.
        let Conditioning::Text(out) = with_crop_conditioning(text(None), &placements) else { unreachable!() };
        assert!(out.time_ids.is_none());
    }

    #[test]
    fn shuffled_tags_keep_the_leading_ones_and_every_tag() {
        let mut rng = StreamRng::seed_from_u64(5);
        let caption = "sks dog, on grass,  sunny ,, photo, red collar";
        let mut orders = std::collections::HashSet::new();
        for _ in 0..50 {
            let s = shuffle_tags(caption, 1, &mut rng);
            assert!(s.starts_with("sks dog, "), "{s}");
            let mut tags: Vec<&str> = s.split(", ").collect();
            tags.sort_unstable();
            assert_eq!(tags, ["on grass", "photo", "red collar", "sks dog", "sunny"]);
            orders.insert(s);
        }
        assert!(orders.len() > 10, "the tags after the kept one are shuffled");
    }
}
