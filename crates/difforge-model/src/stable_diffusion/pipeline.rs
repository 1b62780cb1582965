//! A Stable Diffusion model as diffusers saves it (`model_index.json`, `unet/`, `vae/`,
//! `text_encoder/` and for SDXL `text_encoder_2/`, their `tokenizer/` folders, `scheduler/`),
//! and text-to-image generation from it: prompts through the text encoder(s), classifier-free
//! guidance with the negative prompt, difforge's sampling loop over the folder's schedule, the
//! VAE's decoder.

use super::components::{Networks, Part};
use super::lora_file::{self, LoraFormat, LoraReport};
use super::scheduler::{SchedulerConfig, Scheduling};
use crate::error::ModelError;
use crate::graphed_denoiser::GraphedDenoiser;
use difforge_diffusion::{sample, Denoiser, NoiseSource, SampleRequest, SamplerConfig, TrajectoryStep};
use difforge_nn::sd::autoencoder_kl::AutoencoderKl;
use difforge_nn::sd::presets::SdPreset;
use difforge_nn::sd::tokenizer::{tokens_tensor, ClipTokenizer};
use difforge_nn::sd::unet_2d_condition::UNet2DConditionModel;
use difforge_nn::sd::ClipTextModel;
use difforge_nn::{Conditioning, TextConditioning};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Tensor};

/// The parts of `model_index.json` difforge reads here (which networks a folder has is read by
/// `components`); the class names of the components are checked by loading them.
#[derive(Debug, Deserialize)]
struct ModelIndex {
    #[serde(rename = "_class_name")]
    class_name: String,
    /// SDXL: an empty negative prompt means zero embeddings rather than the encoded "".
    #[serde(default)]
    force_zeros_for_empty_prompt: Option<bool>,
}

/// Whether a folder is a diffusers Stable Diffusion folder.
pub fn is_diffusers_folder(dir: &Path) -> bool {
    dir.join("model_index.json").is_file() && dir.join("unet").is_dir()
}

/// For a diffusers folder of a pipeline difforge does not load (a `model_index.json` without
/// `unet/`: SD3, Flux, ...), what it is, in words for an error; None for anything else.
pub fn unsupported_pipeline(dir: &Path) -> Option<String> {
    if is_diffusers_folder(dir) {
        return None;
    }
    let text = std::fs::read_to_string(dir.join("model_index.json")).ok()?;
    let class = serde_json::from_str::<ModelIndex>(&text).map_or_else(|_| "an unknown pipeline".to_string(), |m| m.class_name);
    Some(format!(
        "a diffusers {class} folder; difforge loads StableDiffusionPipeline and StableDiffusionXLPipeline folders (SD 1.x, 2.x, XL): {class} is not supported yet"
    ))
}

/// The generations of the family; they differ in how prompts become conditioning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// SD 1.x and 2.x: one text encoder, its last hidden state.
    Single,
    /// SDXL: two encoders' penultimate hidden states side by side, the second's pooled
    /// projection and the size/crop ids.
    Xl,
}

pub struct StableDiffusion {
    pub dir: PathBuf,
    pub generation: Generation,
    pub unet: UNet2DConditionModel,
    _unet_vars: nn::VarStore,
    pub vae: AutoencoderKl,
    pub text_encoders: Vec<ClipTextModel>,
    /// The text encoders' variables (their networks hold views of them), for LoRA files.
    text_encoder_vars: Vec<nn::VarStore>,
    /// One per text encoder: `tokenizer/` (and `tokenizer_2/`).
    pub tokenizers: Vec<ClipTokenizer>,
    pub scheduling: Scheduling,
    force_zeros_for_empty_prompt: bool,
    device: Device,
}

/// Token ids per text encoder (each (B, 77)) for the prompts and for the negative prompts.
#[derive(Debug)]
pub struct PromptIds {
    pub prompt: Vec<Tensor>,
    pub negative: Vec<Tensor>,
    /// Which images have no negative prompt (SDXL then guides against zero embeddings, as
    /// diffusers does when `negative_prompt` is None).
    pub negative_empty: Vec<bool>,
}

/// What a pipeline is assembled from.
pub(super) struct Parts {
    pub networks: Networks,
    pub tokenizers: Vec<ClipTokenizer>,
    pub scheduling: Scheduling,
    pub force_zeros_for_empty_prompt: Option<bool>,
}

/// One text-to-image request after tokenisation.
pub struct TextToImage<'a> {
    pub ids: &'a PromptIds,
    pub width: i64,
    pub height: i64,
    pub sampler: &'a SamplerConfig,
    /// Starting noise, one seed per image.
    pub noise: &'a NoiseSource,
    /// diffusers' `clip_skip`: condition on an earlier layer of the text encoder.
    pub clip_skip: usize,
}

fn read_index(dir: &Path) -> Result<ModelIndex, ModelError> {
    let path = dir.join("model_index.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::checkpoint(&path, e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| ModelError::checkpoint(&path, format!("not a valid model index: {e}")))
}

impl StableDiffusion {
    /// Loads every component of a diffusers folder onto `device` (float32).
    pub fn load(dir: &Path, device: Device) -> Result<StableDiffusion, ModelError> {
        StableDiffusion::from_networks(dir, Networks::load_diffusers(dir, device)?, device)
    }

    /// The pipeline around networks loaded from the diffusers folder `dir` or from a single file
    /// (see `single_file`), with `dir`'s model index, tokenizers and scheduler.
    pub(super) fn from_networks(dir: &Path, networks: Networks, device: Device) -> Result<StableDiffusion, ModelError> {
        let index = read_index(dir)?;
        let tokenizers = ["tokenizer", "tokenizer_2"].iter().take(networks.text_encoders.len()).map(|t| ClipTokenizer::load(dir.join(t)));
        let tokenizers = tokenizers.collect::<Result<Vec<_>, _>>()?;
        let scheduler_dir = dir.join("scheduler");
        let scheduling = SchedulerConfig::read(&scheduler_dir)?.scheduling(&scheduler_dir.join("scheduler_config.json"))?;
        tracing::debug!(class = index.class_name, "loaded a diffusers folder");
        let parts = Parts { networks, tokenizers, scheduling, force_zeros_for_empty_prompt: index.force_zeros_for_empty_prompt };
        Ok(StableDiffusion::assemble(dir.to_path_buf(), parts, device))
    }

    /// The pipeline of its parts; SDXL guides against zero embeddings when there is no negative
    /// prompt unless the model index says otherwise.
    pub(super) fn assemble(dir: PathBuf, parts: Parts, device: Device) -> StableDiffusion {
        let Parts { networks, tokenizers, scheduling, force_zeros_for_empty_prompt } = parts;
        let generation = if networks.text_encoders.len() == 2 { Generation::Xl } else { Generation::Single };
        let (text_encoders, text_encoder_vars): (Vec<_>, Vec<_>) = networks.text_encoders.into_iter().map(|e| (e.net, e.vars)).unzip();
        StableDiffusion {
            dir,
            generation,
            unet: networks.unet.net,
            _unet_vars: networks.unet.vars,
            vae: networks.vae.net,
            text_encoders,
            text_encoder_vars,
            tokenizers,
            scheduling,
            force_zeros_for_empty_prompt: force_zeros_for_empty_prompt.unwrap_or(generation == Generation::Xl),
            device,
        }
    }

    /// A model of a preset's architecture with freshly initialised weights and no tokenizers
    /// (benchmarks; the start of training from scratch), with Stable Diffusion's DDIM settings.
    pub fn from_preset(preset: &SdPreset, device: Device) -> Result<StableDiffusion, ModelError> {
        let scheduling = SchedulerConfig::stable_diffusion(preset.prediction_type).scheduling(Path::new("(built-in DDIM settings)"))?;
        let parts = Parts { networks: Networks::from_preset(preset, device)?, tokenizers: Vec::new(), scheduling, force_zeros_for_empty_prompt: None };
        Ok(StableDiffusion::assemble(PathBuf::from(format!("(preset {})", preset.name)), parts, device))
    }

    /// Merges a LoRA file (kohya/webui or diffusers/PEFT keys) into the UNet's and text
    /// encoders' weights, `multiplier` times its own scale (see `lora_file`). Checked before
    /// any weight changes: a key that matches no module, or a shape that does not fit, fails
    /// and leaves the model as it was. Several files merge in the order they are applied.
    pub fn apply_lora(&mut self, path: &Path, multiplier: f64) -> Result<LoraReport, ModelError> {
        lora_file::apply(path, multiplier, &self.lora_targets())
    }

    /// The networks a LoRA file may patch, with their variables.
    fn lora_targets(&self) -> Vec<(Part, &tch::nn::VarStore)> {
        let mut targets = vec![(Part::Unet, &self._unet_vars)];
        targets.extend([Part::TextEncoder, Part::TextEncoder2].into_iter().zip(&self.text_encoder_vars));
        targets
    }

    /// Writes the LoRA file at `path` to `out` in `format` (kohya's or diffusers'), the same
    /// updates; this model's names resolve the file's (see `lora_file::convert`). The model is
    /// not changed. Returns the number of modules written.
    pub fn convert_lora(&self, path: &Path, format: LoraFormat, out: &Path) -> Result<usize, ModelError> {
        lora_file::convert(path, &self.lora_targets(), format, out)
    }

    /// Trainable scalars of the UNet.
    pub fn unet_parameters(&self) -> i64 {
        difforge_nn::weights::parameter_count(&self._unet_vars)
    }

    /// Token ids for `n` images of `prompt` against `negative` (None: no negative prompt, which
    /// is the empty prompt except for SDXL's zero embeddings), and a warning for each text a
    /// tokenizer's 77 tokens cut short, naming the dropped words.
    pub fn tokenize(&self, prompt: &str, negative: Option<&str>, n: usize) -> Result<(PromptIds, Vec<String>), ModelError> {
        let mut ids = PromptIds { prompt: Vec::new(), negative: Vec::new(), negative_empty: vec![negative.is_none(); n] };
        let mut warnings = Vec::new();
        for tokenizer in &self.tokenizers {
            let (p, q) = (tokenizer.encode(prompt)?, tokenizer.encode(negative.unwrap_or(""))?);
            for (what, t) in [("prompt", &p), ("negative prompt", &q)] {
                if let Some(dropped) = &t.truncated {
                    warnings.push(format!("the {what} is longer than the text encoder's 77 tokens; these words were dropped: {dropped}"));
                }
            }
            ids.prompt.push(tokens_tensor(&vec![p; n]).to_device(self.device));
            ids.negative.push(tokens_tensor(&vec![q; n]).to_device(self.device));
        }
        warnings.dedup();
        Ok((ids, warnings))
    }

    /// Pixels per latent along each side.
    pub fn vae_scale(&self) -> i64 {
        self.vae.downscale()
    }

    /// The size the UNet was trained at, in pixels (its `sample_size` times the VAE's scale).
    pub fn default_size(&self) -> i64 {
        self.unet.config().sample_size.unwrap_or(64) * self.vae_scale()
    }

    /// Image sides must be multiples of this: the VAE's scale times the UNet's downsamplings.
    pub fn size_multiple(&self) -> i64 {
        self.vae_scale() << (self.unet.config().block_out_channels.len() - 1)
    }

    /// The hidden states the UNet attends to (and SDXL's pooled embedding) for ids per encoder.
    fn encode(&self, ids: &[Tensor], clip_skip: usize) -> Result<(Tensor, Option<Tensor>), ModelError> {
        if ids.len() != self.text_encoders.len() {
            return Err(ModelError::Other(format!("{} token-id tensors for {} text encoders", ids.len(), self.text_encoders.len())));
        }
        let mut hidden = Vec::with_capacity(ids.len());
        let mut pooled = None;
        for (encoder, ids) in self.text_encoders.iter().zip(ids) {
            let out = encoder.forward(ids)?;
            match self.generation {
                Generation::Single => hidden.push(encoder.clip_skip(&out, clip_skip)?),
                Generation::Xl => {
                    // SDXL takes the penultimate layer as it is, without the final norm.
                    let n = out.hidden_states.len();
                    let layer =
                        n.checked_sub(2 + clip_skip).ok_or_else(|| ModelError::Other(format!("clip_skip {clip_skip} is too large for this text encoder")))?;
                    hidden.push(out.hidden_states[layer].shallow_clone());
                    pooled = Some(out.pooled);
                }
            }
        }
        Ok((Tensor::cat(&hidden, -1), pooled))
    }

    /// The conditioning of the prompts and of the negative prompts.
    pub fn conditioning(&self, ids: &PromptIds, size: (i64, i64), clip_skip: usize) -> Result<(Conditioning, Conditioning), ModelError> {
        let (hidden, pooled) = self.encode(&ids.prompt, clip_skip)?;
        let (neg_hidden, mut neg_pooled) = self.encode(&ids.negative, clip_skip)?;
        if self.force_zeros_for_empty_prompt {
            for (i, _) in ids.negative_empty.iter().enumerate().filter(|(_, empty)| **empty) {
                let _ = neg_hidden.get(i as i64).zero_();
                if let Some(p) = neg_pooled.as_mut() {
                    let _ = p.get(i as i64).zero_();
                }
            }
        }
        let b = hidden.size()[0];
        let time_ids = (self.generation == Generation::Xl).then(|| {
            let (h, w) = (size.0 as f32, size.1 as f32);
            // Original size, crop top-left, target size: an uncropped image of the requested size.
            Tensor::from_slice(&[h, w, 0.0, 0.0, h, w]).to_device(self.device).unsqueeze(0).repeat([b, 1])
        });
        let text = |hidden: Tensor, pooled: Option<Tensor>| {
            Conditioning::Text(TextConditioning { hidden, mask: None, pooled, time_ids: time_ids.as_ref().map(Tensor::shallow_clone) })
        };
        Ok((text(hidden, pooled), text(neg_hidden, neg_pooled)))
    }

    /// Checks a requested size against the model.
    pub fn check_size(&self, width: i64, height: i64) -> Result<(), ModelError> {
        let m = self.size_multiple();
        if width <= 0 || height <= 0 || width % m != 0 || height % m != 0 || width > 4096 || height > 4096 {
            return Err(ModelError::Config(difforge_core::ConfigError::new(
                "--size",
                format!("{width}x{height}"),
                format!("WxH, each a multiple of {m} up to 4096"),
            )));
        }
        Ok(())
    }

    /// The final latents of a generation; `observer` sees every step (progress, trajectories).
    pub fn denoise(&self, req: &TextToImage, observer: Option<&mut dyn FnMut(TrajectoryStep)>) -> Result<Tensor, ModelError> {
        self.check_size(req.width, req.height)?;
        let (cond, null) = self.conditioning(req.ids, (req.height, req.width), req.clip_skip)?;
        let request = SampleRequest {
            schedule: &self.scheduling.schedule,
            prediction: self.scheduling.prediction,
            sampler: req.sampler,
            cond,
            null: Some(null),
            noise: req.noise,
        };
        let plain = UNetDenoiser { unet: &self.unet };
        let graphed = if req.sampler.cuda_graphs { GraphedDenoiser::new(UNetDenoiser { unet: &self.unet }, self.device) } else { None };
        let denoiser: &dyn Denoiser = match &graphed {
            Some(g) => g,
            None => &plain,
        };
        Ok(sample(denoiser, &request, observer))
    }

    /// Latents to images in [-1, 1], one at a time so that memory holds one decoded image.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor, ModelError> {
        tch::no_grad(|| Ok(self.vae.decode_sliced(&self.vae.from_latents(latents))?))
    }

    /// Images (B, 3, H, W) in [-1, 1].
    pub fn generate(&self, req: &TextToImage, observer: Option<&mut dyn FnMut(TrajectoryStep)>) -> Result<Tensor, ModelError> {
        let latents = self.denoise(req, observer)?;
        self.decode(&latents)
    }

    /// The latents' shape (C, H, W) for an image of `width` x `height`.
    pub fn latent_shape(&self, width: i64, height: i64) -> [i64; 3] {
        let s = self.vae_scale();
        [self.unet.config().in_channels, height / s, width / s]
    }

    pub fn device(&self) -> Device {
        self.device
    }
}

/// The UNet as the sampling loop's denoiser: text conditioning in, prediction out.
struct UNetDenoiser<'a> {
    unet: &'a UNet2DConditionModel,
}

impl Denoiser for UNetDenoiser<'_> {
    fn predict(&self, x: &Tensor, t: &Tensor, cond: &Conditioning) -> Tensor {
        // The pipeline builds the conditioning the UNet's config asks for (checked in `conditioning`).
        crate::family::sd_unet::predict(self.unet, x, t, cond)
    }
}
