//! transformers' `CLIPModel` (a folder saved with `save_pretrained`: `config.json` with
//! `text_config`, `vision_config`, `projection_dim`, `logit_scale_init_value`; `model.safetensors`;
//! the tokenizer files), and the CLIP score of images against their prompts.
//!
//! The text tower is [`ClipTextModel`] with `text_projection`, the image tower [`ClipVisionModel`]
//! with `visual_projection`, both of the config's top-level `projection_dim`; `logit_scale` is
//! loaded for [`ClipModel::logits_per_image`]. The score is torchmetrics' `CLIPScore`:
//! 100 * cos(image embedding, prompt embedding), the embeddings as `get_image_features` and
//! `get_text_features` give them.

use super::clip_text::{self, ClipTextConfig, ClipTextModel};
use super::clip_vision::{self, ClipVisionConfig, ClipVisionModel};
use super::load;
use super::tokenizer::ClipTokenizer;
use crate::error::NnError;
use serde_json::Value;
use std::path::Path;
use tch::nn::{self, VarStore};
use tch::{Device, Kind, Tensor};

/// A transformers `CLIPConfig`: the two towers' configs and the shared projection width.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipConfig {
    /// `text_config`; its own `projection_dim` is not used (see `projection_dim`).
    pub text_config: ClipTextConfig,
    /// `vision_config`; its own `projection_dim` is not used.
    pub vision_config: ClipVisionConfig,
    /// The width of both projections (the top-level key; transformers' `CLIPModel` reads this one,
    /// not the towers' own, which usually keep their default 512).
    pub projection_dim: i64,
    /// The initial `logit_scale` (ln(1 / 0.07)); the folder's weights replace it.
    pub logit_scale_init_value: f64,
}

impl Default for ClipConfig {
    /// transformers' `CLIPConfig()` defaults.
    fn default() -> Self {
        ClipConfig { text_config: ClipTextConfig::default(), vision_config: ClipVisionConfig::default(), projection_dim: 512, logit_scale_init_value: 2.6592 }
    }
}

/// A tower's config from `config.json`: the object `key` (e.g. `text_config`), or, as transformers
/// reads configs written by transformers < 4.23, `{key}_dict` (`text_config_dict`) when that is an
/// object: transformers then builds the tower from it and its defaults alone, overriding every
/// field of `key`. A field set to null takes the default.
fn tower_config<T: serde::de::DeserializeOwned>(root: &Value, key: &str, path: &Path) -> Result<T, NnError> {
    let legacy = format!("{key}_dict");
    let (name, value) = match (root.get(&legacy), root.get(key)) {
        (Some(v @ Value::Object(_)), _) => (legacy.as_str(), v),
        (_, Some(v)) => (key, v),
        (_, None) => (key, &Value::Null),
    };
    let fields = match value {
        Value::Null => serde_json::Map::new(),
        Value::Object(o) => o.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect(),
        other => return Err(NnError::Load { path: path.to_path_buf(), reason: format!("`{name}` is {other}, not an object") }),
    };
    serde_json::from_value(Value::Object(fields)).map_err(|e| NnError::Load { path: path.to_path_buf(), reason: format!("not a valid `{name}`: {e}") })
}

impl ClipConfig {
    /// Reads `dir/config.json`; errors name the file and the key.
    pub fn read(dir: &Path) -> Result<ClipConfig, NnError> {
        let path = dir.join("config.json");
        let root: Value = load::read_config(dir)?;
        let defaults = ClipConfig::default();
        let err = |reason: String| NnError::Load { path: path.clone(), reason };
        if let Some(model_type) = root.get("model_type").and_then(Value::as_str) {
            if model_type != "clip" {
                return Err(err(format!("model_type is {model_type:?}, not a CLIPModel (\"clip\")")));
            }
        }
        let projection_dim = match root.get("projection_dim") {
            None | Some(Value::Null) => defaults.projection_dim,
            Some(v) => v.as_i64().ok_or_else(|| err(format!("projection_dim is {v}, not an integer")))?,
        };
        let logit_scale_init_value = match root.get("logit_scale_init_value") {
            None | Some(Value::Null) => defaults.logit_scale_init_value,
            Some(v) => v.as_f64().ok_or_else(|| err(format!("logit_scale_init_value is {v}, not a number")))?,
        };
        let config = ClipConfig {
            text_config: tower_config(&root, "text_config", &path)?,
            vision_config: tower_config(&root, "vision_config", &path)?,
            projection_dim,
            logit_scale_init_value,
        };
        config.validate().map_err(|e| err(e.to_string()))?;
        Ok(config)
    }

    /// The text tower's config as [`ClipTextModel`] takes it: with `text_projection` of
    /// `projection_dim`.
    pub fn text_tower(&self) -> ClipTextConfig {
        ClipTextConfig { projection_dim: self.projection_dim, architectures: vec![clip_text::WITH_PROJECTION.to_string()], ..self.text_config.clone() }
    }

    /// The image tower's config, with `projection_dim` the shared one.
    pub fn vision_tower(&self) -> ClipVisionConfig {
        ClipVisionConfig { projection_dim: self.projection_dim, ..self.vision_config.clone() }
    }

    pub fn validate(&self) -> Result<(), difforge_core::ConfigError> {
        let prefixed = |tower: &str, mut e: difforge_core::ConfigError| {
            e.key = format!("{tower}.{}", e.key);
            e
        };
        self.text_tower().validate().map_err(|e| prefixed("text_config", e))?;
        self.vision_tower().validate().map_err(|e| prefixed("vision_config", e))?;
        if !self.logit_scale_init_value.is_finite() {
            return Err(difforge_core::ConfigError::new("logit_scale_init_value", self.logit_scale_init_value, "a finite number"));
        }
        Ok(())
    }
}

/// The tensors a `CLIPModel` file may hold that are not variables, dropped on load: the two
/// `position_ids` buffers older transformers saved (OpenAI's checkpoints have them).
pub const IGNORED_TENSORS: [&str; 2] = [clip_text::POSITION_IDS, clip_vision::VISION_POSITION_IDS];

/// A whole CLIP model: both towers, their projections, `logit_scale` and the tokenizer.
#[derive(Debug)]
pub struct ClipModel {
    config: ClipConfig,
    text: ClipTextModel,
    vision: ClipVisionModel,
    logit_scale: Tensor,
    tokenizer: ClipTokenizer,
}

impl ClipModel {
    /// Builds the networks under `p` (a VarStore's root, for transformers' names), with
    /// `tokenizer` for the prompts.
    pub fn new(p: &nn::Path, config: &ClipConfig, tokenizer: ClipTokenizer) -> Result<ClipModel, NnError> {
        config.validate()?;
        Ok(ClipModel {
            config: config.clone(),
            text: ClipTextModel::new(p, &config.text_tower())?,
            vision: ClipVisionModel::new(p, &config.vision_tower(), true)?,
            logit_scale: p.var("logit_scale", &[], nn::Init::Const(config.logit_scale_init_value)),
            tokenizer,
        })
    }

    /// Reads a transformers `CLIPModel` folder onto `device`: `config.json`, the weights
    /// (`model.safetensors`, shards, or `pytorch_model.bin`) and the tokenizer (see
    /// [`ClipTokenizer::load`]). Strict: every variable must be in the files with its shape and
    /// no tensor may be left over except [`IGNORED_TENSORS`]; errors name the file and tensors.
    /// The variables are frozen.
    pub fn load(dir: &Path, device: Device) -> Result<ClipModel, NnError> {
        let config = ClipConfig::read(dir)?;
        let tokenizer = ClipTokenizer::load(dir)?;
        let mut vs = VarStore::new(device);
        let model = ClipModel::new(&vs.root(), &config, tokenizer)?;
        let files = load::weight_files(dir, "model", None)?;
        let mut tensors = load::read_tensors(&files)?;
        for name in IGNORED_TENSORS {
            tensors.remove(name);
        }
        // Errors name the weight file when there is one, the folder for shards.
        let source = if let [file] = files.as_slice() { file.as_path() } else { dir };
        load::load_strict(&vs, &tensors, source)?;
        vs.freeze();
        Ok(model)
    }

    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    pub fn text_model(&self) -> &ClipTextModel {
        &self.text
    }

    pub fn vision_model(&self) -> &ClipVisionModel {
        &self.vision
    }

    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// The side of the square images the image tower takes.
    pub fn image_size(&self) -> i64 {
        self.config.vision_config.image_size
    }

    /// (B, projection_dim) image embeddings of preprocessed `pixel_values` (see
    /// [`clip_vision::preprocess`]), not normalised: transformers' `get_image_features`.
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor, NnError> {
        let out = self.vision.forward(pixel_values)?;
        out.image_embeds.ok_or_else(|| NnError::Invalid("the CLIP image tower has no projection".to_string()))
    }

    /// (B, projection_dim) prompt embeddings of token ids (B, L), not normalised:
    /// transformers' `get_text_features`.
    pub fn text_features(&self, input_ids: &Tensor) -> Result<Tensor, NnError> {
        Ok(self.text.forward(input_ids)?.pooled)
    }

    /// The prompts as (B, 77) token ids, padded and truncated as `CLIPTokenizer` does with
    /// `padding="max_length", max_length=77, truncation=True` (torchmetrics pads to the longest
    /// prompt instead, with an attention mask; with CLIP's causal mask and end-token pooling the
    /// embeddings are the same). Prompts longer than 75 tokens are cut, as transformers cuts them;
    /// [`ClipTokenizer::encode`] on [`ClipModel::tokenizer`] says what was dropped.
    pub fn tokenize(&self, prompts: &[&str]) -> Result<Tensor, NnError> {
        self.tokenizer.encode_batch(prompts)
    }

    /// (images, prompts) logits, `exp(logit_scale)` times the cosine of each image's and each
    /// prompt's embedding, as `CLIPModel`'s `logits_per_image`.
    pub fn logits_per_image(&self, pixel_values: &Tensor, input_ids: &Tensor) -> Result<Tensor, NnError> {
        let image = normalised(&self.image_features(pixel_values)?);
        let text = normalised(&self.text_features(input_ids)?);
        Ok(image.matmul(&text.tr()) * self.logit_scale.exp().to_device(image.device()))
    }

    /// (N,) 100 * cos(image i, prompt i) of preprocessed `pixel_values` (N, 3, S, S) and token ids
    /// (N, L): torchmetrics' per-image CLIP score before any clamp (see [`clip_score`]).
    pub fn clip_score_raw_pixels(&self, pixel_values: &Tensor, input_ids: &Tensor) -> Result<Tensor, NnError> {
        let (n, m) = (pixel_values.size().first().copied(), input_ids.size().first().copied());
        if n != m {
            return Err(NnError::Invalid(format!("CLIP score: {n:?} images but {m:?} prompts")));
        }
        tch::no_grad(|| {
            let image = self.image_features(pixel_values)?;
            let text = self.text_features(input_ids)?.to_device(image.device());
            Ok(raw_scores(&image, &text))
        })
    }

    /// (N,) per-image 100 * cos(image i, prompt i), unclamped, of generated images (N, 3, H, W)
    /// with values in [-1, 1], any size (preprocessed with [`clip_vision::preprocess`]), and their
    /// N prompts. The mean of these, clamped at 0, is torchmetrics' `CLIPScore` of the set.
    pub fn clip_score_raw(&self, images: &Tensor, prompts: &[&str]) -> Result<Tensor, NnError> {
        let n = images.size().first().copied().unwrap_or(0);
        if n != prompts.len() as i64 {
            return Err(NnError::Invalid(format!("CLIP score: {n} images but {} prompts", prompts.len())));
        }
        let pixel_values = tch::no_grad(|| clip_vision::preprocess(images, self.image_size()))?;
        self.clip_score_raw_pixels(&pixel_values, &self.tokenize(prompts)?)
    }

    /// (N,) per-image CLIP scores, 100 * max(cos(image i, prompt i), 0) (see
    /// [`ClipModel::clip_score_raw`] for the inputs and [`clip_score`] for the definition).
    /// Call it on batches (the whole batch goes through the image tower at once) and average.
    pub fn clip_score(&self, images: &Tensor, prompts: &[&str]) -> Result<Tensor, NnError> {
        Ok(clip_score(&self.clip_score_raw(images, prompts)?))
    }
}

fn normalised(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2, [-1], true)
}

/// (N,) 100 * cos(image_embeds i, text_embeds i) of (N, D) embeddings, computed as torchmetrics
/// computes it: each embedding divided by its L2 norm, then the dot product.
pub fn raw_scores(image_embeds: &Tensor, text_embeds: &Tensor) -> Tensor {
    (normalised(image_embeds) * normalised(text_embeds)).sum_dim_intlist(&[-1_i64][..], false, Kind::Float) * 100.0
}

/// Per-image CLIP scores from [`raw_scores`]: 100 * max(cos, 0), CLIP-S's clamp (Hessel et al.
/// 2021) with torchmetrics' weight 100. torchmetrics' `CLIPScore.compute` clamps the mean instead:
/// max(mean(100 * cos), 0). The two agree whenever no image scores below 0, as with real CLIP
/// models on their prompts; for a set where some do, report the clamped mean of
/// [`ClipModel::clip_score_raw`] to match torchmetrics exactly.
pub fn clip_score(raw: &Tensor) -> Tensor {
    raw.clamp_min(0.0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::sd::ClipActivation;
    use std::collections::HashMap;
    use std::path::PathBuf;

    /// The fixture's prompts (tools/make_clip_fixtures.py `PROMPTS`).
    const PROMPTS: [&str; 2] = ["the quick brown fox jumps over the lazy dog", "a photo of a cat on a red sofa"];

    /// |ours - transformers| <= 1e-5 * max|transformers|, elementwise, float32 (as the SD parity tests).
    pub(crate) fn assert_close(what: &str, actual: &Tensor, expected: &Tensor) {
        assert_eq!(actual.size(), expected.size(), "{what}: shape");
        let (actual, expected) = (actual.to_kind(Kind::Double), expected.to_kind(Kind::Double));
        let scale = expected.abs().max().double_value(&[]).max(1e-12);
        let worst = (actual - &expected).abs().max().double_value(&[]);
        assert!(worst <= 1e-5 * scale, "{what}: worst difference {worst:e} against max |reference| {scale:e}");
    }

    /// The tiny CLIPModel folder.
    pub(crate) fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip/tiny-clip")
    }

    /// The reference tensors of tools/make_clip_fixtures.py.
    pub(crate) fn refs() -> HashMap<String, Tensor> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip/tiny-clip-refs.safetensors");
        Tensor::read_safetensors(path).unwrap().into_iter().collect()
    }

    /// A copy of the fixture folder in a tempdir, with `edit` applied to its tensors.
    fn edited_copy(edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(fixture()).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
        let mut tensors = Tensor::read_safetensors(fixture().join("model.safetensors")).unwrap();
        edit(&mut tensors);
        Tensor::write_safetensors(&tensors, dir.path().join("model.safetensors")).unwrap();
        dir
    }

    #[test]
    fn clip_model_matches_transformers() {
        let model = ClipModel::load(&fixture(), Device::Cpu).unwrap();
        assert_eq!((model.config().projection_dim, model.config().text_config.projection_dim), (16, 512), "the top-level projection_dim counts");
        let r = refs();
        let ids = model.tokenize(&PROMPTS).unwrap();
        assert!(ids.equal(&r["input_ids"]), "the tokenizer's ids differ from transformers'");
        tch::no_grad(|| {
            let pixels = &r["pixel_values"];
            let vision = model.vision_model().forward(pixels).unwrap();
            assert_close("vision.last_hidden_state", &vision.last_hidden_state, &r["vision.last_hidden_state"]);
            assert_close("vision.pooler_output", &vision.pooler_output, &r["vision.pooler_output"]);
            assert_close("image_embeds", &model.image_features(pixels).unwrap(), &r["image_embeds"]);
            assert_close("text_embeds", &model.text_features(&ids).unwrap(), &r["text_embeds"]);
            assert_close("logits_per_image", &model.logits_per_image(pixels, &ids).unwrap(), &r["logits_per_image"]);
            let raw = model.clip_score_raw_pixels(pixels, &ids).unwrap();
            assert_close("clip_score_raw", &raw, &r["clip_score_raw"]);
            // The fixture's first pair scores above 0 and its second below: the clamp acts on one.
            let scores = Vec::<f64>::try_from(clip_score(&raw).to_kind(Kind::Double)).unwrap();
            let expected = Vec::<f64>::try_from(r["clip_score_raw"].to_kind(Kind::Double)).unwrap();
            assert!(expected[0] > 1.0 && expected[1] < -1.0, "{expected:?}");
            assert!((scores[0] - expected[0]).abs() <= 1e-5 * expected[0] && scores[1] == 0.0, "{scores:?} against {expected:?}");
        });
    }

    #[test]
    fn clip_model_scores_generated_images_of_any_size() {
        let model = ClipModel::load(&fixture(), Device::Cpu).unwrap();
        let images = Tensor::rand([2, 3, 45, 37], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let raw = model.clip_score_raw(&images, &PROMPTS).unwrap();
        let pixels = clip_vision::preprocess(&images, 30).unwrap();
        assert_close("raw scores through preprocess", &raw, &model.clip_score_raw_pixels(&pixels, &model.tokenize(&PROMPTS).unwrap()).unwrap());
        assert!(model.clip_score(&images, &PROMPTS).unwrap().equal(&raw.clamp_min(0.0)));
        let e = model.clip_score(&images, &PROMPTS[..1]).unwrap_err().to_string();
        assert!(e.contains("2 images but 1 prompts"), "{e}");
    }

    #[test]
    fn clip_model_missing_visual_projection_fails_naming_it() {
        let dir = edited_copy(|t| t.retain(|(name, _)| name != "visual_projection.weight"));
        let e = ClipModel::load(dir.path(), Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("missing: `visual_projection.weight`") && e.contains(&dir.path().join("model.safetensors").display().to_string()), "{e}");
    }

    #[test]
    fn clip_model_ignores_position_ids_and_refuses_other_extra_tensors() {
        let dir = edited_copy(|t| {
            t.push((clip_text::POSITION_IDS.to_string(), Tensor::arange(77, (Kind::Int64, Device::Cpu)).unsqueeze(0)));
            t.push((clip_vision::VISION_POSITION_IDS.to_string(), Tensor::arange(37, (Kind::Int64, Device::Cpu)).unsqueeze(0)));
        });
        ClipModel::load(dir.path(), Device::Cpu).unwrap();
        let dir = edited_copy(|t| t.push(("vision_model.head.weight".to_string(), Tensor::zeros([2], (Kind::Float, Device::Cpu)))));
        let e = ClipModel::load(dir.path(), Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("not part of the model: `vision_model.head.weight`"), "{e}");
        let dir = edited_copy(|t| {
            for (name, tensor) in t.iter_mut() {
                if name == "logit_scale" {
                    *tensor = Tensor::zeros([1], (Kind::Float, Device::Cpu));
                }
            }
        });
        let e = ClipModel::load(dir.path(), Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("`logit_scale` has shape [1], the model expects []"), "{e}");
    }

    #[test]
    fn clip_config_reads_legacy_and_refuses_other_models() {
        let dir = tempfile::tempdir().unwrap();
        let write = |json: &str| std::fs::write(dir.path().join("config.json"), json).unwrap();
        // transformers < 4.23's form: `text_config_dict` replaces `text_config`, defaults filling in.
        write(
            r#"{"model_type": "clip", "projection_dim": 8,
                "text_config": {"architectures": null, "hidden_size": 999, "num_hidden_layers": 3, "eos_token_id": 2},
                "text_config_dict": {"hidden_size": 64, "num_attention_heads": 4, "eos_token_id": 2, "architectures": null},
                "vision_config": {"image_size": 32, "patch_size": 8, "hidden_size": 48, "num_attention_heads": 4, "hidden_act": "gelu"},
                "vision_config_dict": null}"#,
        );
        let c = ClipConfig::read(dir.path()).unwrap();
        assert_eq!((c.text_config.hidden_size, c.text_config.num_hidden_layers, c.text_config.eos_token_id), (64, 12, 2));
        assert_eq!((c.vision_config.image_size, c.vision_config.hidden_size, c.vision_config.hidden_act), (32, 48, ClipActivation::Gelu));
        assert_eq!((c.projection_dim, c.logit_scale_init_value), (8, 2.6592));
        assert_eq!((c.text_tower().projection_dim, c.vision_tower().projection_dim, c.text_tower().with_projection()), (8, 8, true));

        write(r#"{"model_type": "siglip"}"#);
        let e = ClipConfig::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains("\"siglip\""), "{e}");
        write(r#"{"vision_config": {"hidden_size": 50, "num_attention_heads": 4}}"#);
        let e = ClipConfig::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("vision_config.hidden_size"), "{e}");
        write(r#"{"text_config": {"hidden_act": "relu"}}"#);
        let e = ClipConfig::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("`text_config`") && e.contains("relu"), "{e}");
    }
}
