//! Generating images from a model: the one place that turns (conditions, seeds, sampler) into
//! images, used by training previews, `difforge sample`, evaluation, explanations and the server.
//! Image k of a request with seed S draws its noise from seed S + k.

use crate::error::ModelError;
use crate::family::{Condition, ConditionKind, Family};
use crate::graphed_denoiser::GraphedDenoiser;
use crate::model::{DiffusionModel, Weights};
use difforge_diffusion::{sample_until, Denoiser, NoiseSource, SampleRequest, SamplerConfig};
use tch::{Device, Tensor};

pub struct GenerateSpec<'a> {
    /// What each image is conditioned on (one per seed).
    pub conditions: Vec<Condition>,
    /// One noise seed per image.
    pub seeds: Vec<u64>,
    pub sampler: &'a SamplerConfig,
    pub weights: Weights,
    /// Largest batch sent through the network at once.
    pub max_batch: usize,
    /// Pad every chunk to exactly `max_batch` images. libtorch's CPU kernels give results that
    /// differ in the last bits between batch sizes (not between neighbours at one size), so a
    /// fixed size makes each image independent of what it was batched with: the server relies
    /// on this to give the same bytes for the same request and seed.
    pub fixed_batch: bool,
    /// What guidance steers each image away from (one per seed): a negative prompt, or
    /// `Condition::Unconditional` for the family's null. Empty: the null for every image.
    pub negatives: Vec<Condition>,
    /// (height, width) in pixels; None: the model's own size. Other sizes only where the family
    /// has a [`Family::size_multiple`](Family::size_multiple) they are multiples of.
    pub size: Option<[i64; 2]>,
}

/// Images (N, C, H, W) on the CPU, clamped to [-1, 1].
pub fn generate(model: &DiffusionModel, spec: &GenerateSpec) -> Result<Tensor, ModelError> {
    generate_until(model, spec, &|| false)
}

/// [`generate`], given up with [`ModelError::Cancelled`] before any denoising step (or chunk)
/// at which `stop` says so: a server stops work nobody waits for any more.
pub fn generate_until(model: &DiffusionModel, spec: &GenerateSpec, stop: &dyn Fn() -> bool) -> Result<Tensor, ModelError> {
    if spec.conditions.len() != spec.seeds.len() {
        return Err(ModelError::Other(format!("{} conditions for {} seeds: one per image is needed", spec.conditions.len(), spec.seeds.len())));
    }
    if !spec.negatives.is_empty() && spec.negatives.len() != spec.seeds.len() {
        return Err(ModelError::Other(format!("{} negatives for {} seeds: one per image (or none) is needed", spec.negatives.len(), spec.seeds.len())));
    }
    let shape = match spec.size {
        None => model.latent_shape(),
        Some(size) => model.codec().latent_shape(checked_size(model, size)?),
    };
    let plain = model.denoiser(spec.weights);
    let graphed = if spec.sampler.cuda_graphs { GraphedDenoiser::new(model.denoiser(spec.weights), model.device()) } else { None };
    let denoiser: &dyn Denoiser = match &graphed {
        Some(g) => g,
        None => &plain,
    };
    let sampler = sampler_for(model, spec.sampler);
    let mut parts = Vec::new();
    let chunk = spec.max_batch.max(1);
    for (chunk_index, seeds) in spec.seeds.chunks(chunk).enumerate() {
        let offset = chunk_index * chunk;
        let real = seeds.len();
        let mut seeds = seeds.to_vec();
        let mut conditions = spec.conditions[offset..offset + real].to_vec();
        let mut negatives = spec.negatives.get(offset..offset + real).map(<[Condition]>::to_vec);
        if spec.fixed_batch {
            // Padding: copies of the first image, dropped below.
            seeds.resize(chunk, seeds[0]);
            conditions.resize(chunk, conditions[0].clone());
            if let Some(n) = negatives.as_mut() {
                n.resize(chunk, n[0].clone());
            }
        }
        let (cond, mut null) = model.encode(&conditions)?;
        if let (Some(negatives), Some(_)) = (&negatives, &null) {
            // A negative is encoded as a condition; an unconditional one is the family's null.
            null = Some(model.encode(negatives)?.0);
        }
        let noise = NoiseSource::new(seeds, shape, model.device()).with_start(spec.sampler.noise);
        let req = SampleRequest { schedule: model.schedule(), prediction: model.config().diffusion.prediction, sampler: &sampler, cond, null, noise: &noise };
        let latents = sample_until(denoiser, &req, stop).ok_or(ModelError::Cancelled)?.narrow(0, 0, real as i64);
        parts.push(model.codec().decode(&latents).clamp(-1.0, 1.0).to_device(Device::Cpu));
    }
    if parts.is_empty() {
        return Err(ModelError::Other("no images asked for".into()));
    }
    Ok(Tensor::cat(&parts, 0))
}

/// What a grid of generated images shows, as the JSON of its `difforge` PNG text chunk: the
/// sampler settings (`noise` says how the starting noise of each seed was drawn), `about` (the
/// caller's fields: checkpoint, step, ...) and each tile in order with its seed and prompt or
/// class, so any tile can be drawn again.
pub fn grid_metadata(spec: &GenerateSpec, columns: usize, about: serde_json::Value) -> String {
    images_metadata(&spec.conditions, &spec.seeds, &spec.negatives, spec.sampler, columns, about)
}

/// [`grid_metadata`] of images generated outside a [`GenerateSpec`] (a published model's).
pub fn images_metadata(
    conditions: &[Condition],
    seeds: &[u64],
    negatives: &[Condition],
    s: &SamplerConfig,
    columns: usize,
    about: serde_json::Value,
) -> String {
    let tiles: Vec<serde_json::Value> =
        conditions.iter().zip(seeds).enumerate().map(|(i, (condition, &seed))| tile(condition, seed, negatives.get(i))).collect();
    let mut meta = sampler_fields(s);
    meta["columns"] = columns.into();
    meta["images"] = tiles.into();
    merge(&mut meta, about);
    meta.to_string()
}

/// The `difforge` chunk of image `i` of `spec` saved on its own: the grid's fields with the
/// tile's seed and prompt or class at the top level (where `data judge` reads a prompt).
pub fn image_metadata(spec: &GenerateSpec, i: usize, about: serde_json::Value) -> String {
    let mut meta = sampler_fields(spec.sampler);
    if let (Some(condition), Some(&seed)) = (spec.conditions.get(i), spec.seeds.get(i)) {
        merge(&mut meta, tile(condition, seed, spec.negatives.get(i)));
    }
    merge(&mut meta, about);
    meta.to_string()
}

/// One image's seed, prompt or class, and negative prompt.
fn tile(condition: &Condition, seed: u64, negative: Option<&Condition>) -> serde_json::Value {
    let mut tile = serde_json::json!({ "seed": seed });
    match condition {
        Condition::Text(prompt) => tile["prompt"] = prompt.clone().into(),
        Condition::Class(k) => tile["class"] = (*k).into(),
        Condition::Unconditional => {}
    }
    if let Some(Condition::Text(negative)) = negative {
        tile["negative_prompt"] = negative.clone().into();
    }
    tile
}

/// The sampler settings every generated image's metadata carries (`noise`: how the starting
/// noise of each seed was drawn).
fn sampler_fields(s: &SamplerConfig) -> serde_json::Value {
    serde_json::json!({
        "sampler": s.sampler.name(), "steps": s.steps, "guidance": s.guidance, "eta": s.eta,
        "spacing": s.spacing.name(), "noise": s.noise.name(),
    })
}

/// Adds the fields of `extra` (an object) to `meta`.
fn merge(meta: &mut serde_json::Value, extra: serde_json::Value) {
    if let (Some(map), serde_json::Value::Object(extra)) = (meta.as_object_mut(), extra) {
        map.extend(extra);
    }
}

/// The pixel shape of an image of `size` (height, width), which must be the model's own or
/// multiples of its family's size step.
pub fn checked_size(model: &DiffusionModel, [h, w]: [i64; 2]) -> Result<[i64; 3], ModelError> {
    let [c, own_h, own_w] = model.family().pixel_shape();
    let multiple = model.family().size_multiple();
    let fits = match multiple {
        _ if [h, w] == [own_h, own_w] => true,
        Some(m) => h > 0 && w > 0 && h % m == 0 && w % m == 0,
        None => false,
    };
    if !fits {
        let allowed = match multiple {
            Some(m) => format!("sides that are positive multiples of {m}"),
            None => format!("this model's own size, {own_w}x{own_h}"),
        };
        return Err(ModelError::Other(format!("size {w}x{h}: expected {allowed}")));
    }
    Ok([c, h, w])
}

/// The sampler settings as they apply to `model`: `clip_x0` clamps a predicted clean *image* to
/// [-1, 1], so a latent model (whose clean latents are not bounded so) never clamps, as
/// diffusers' Stable Diffusion schedulers (`clip_sample = false`).
pub fn sampler_for(model: &DiffusionModel, sampler: &SamplerConfig) -> SamplerConfig {
    SamplerConfig { clip_x0: sampler.clip_x0 && !model.codec().is_latent(), ..sampler.clone() }
}

/// The conditions of a preview grid: `per_class` images of every class or preview prompt (row
/// by row), or
/// `per_class` x 8 unconditional ones; seeds `seed ..`.
pub fn preview_conditions(family: &dyn Family, per_class: usize, seed: u64) -> (Vec<Condition>, Vec<u64>) {
    let conditions: Vec<Condition> = match family.condition_kind() {
        ConditionKind::Nothing => vec![Condition::Unconditional; per_class * 8],
        ConditionKind::Classes(k) => (0..k).flat_map(|c| std::iter::repeat_n(Condition::Class(c), per_class)).collect(),
        ConditionKind::Text => family.preview_prompts().into_iter().flat_map(|p| std::iter::repeat_n(Condition::Text(p), per_class)).collect(),
    };
    let seeds = (0..conditions.len() as u64).map(|k| seed + k).collect();
    (conditions, seeds)
}

/// Columns of a preview grid: one row per class, else 8.
pub fn preview_columns(kind: ConditionKind, per_class: usize) -> usize {
    match kind {
        ConditionKind::Nothing => 8,
        ConditionKind::Classes(_) | ConditionKind::Text => per_class,
    }
}

/// Classes in turn (0, 1, 2, ...) for a class-conditional model, else unconditional (the empty
/// prompt for a text model).
pub fn classes_in_turn(kind: ConditionKind, n: usize) -> Vec<Condition> {
    match kind {
        ConditionKind::Classes(k) => (0..n as i64).map(|i| Condition::Class(i % k)).collect(),
        ConditionKind::Nothing | ConditionKind::Text => vec![Condition::Unconditional; n],
    }
}
