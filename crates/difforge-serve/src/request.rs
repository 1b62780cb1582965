//! The body of POST /v1/generate, checked field by field. Every problem is a 400 whose JSON
//! names the field, what was given and what is allowed.

use crate::config::ServeConfig;
use difforge_diffusion::{SamplerConfig, SamplerKind};
use difforge_model::{Condition, ConditionKind};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GenerateBody {
    pub class: Option<i64>,
    /// What a text-conditioned model should draw.
    pub prompt: Option<String>,
    /// What guidance steers a text-conditioned model away from (default: the empty prompt).
    pub negative_prompt: Option<String>,
    pub n: Option<usize>,
    pub steps: Option<usize>,
    pub sampler: Option<String>,
    pub guidance: Option<f64>,
    /// [lo, hi]: guide only at noise levels sigma in (lo, hi]; null: at every step.
    #[serde(default, deserialize_with = "interval")]
    pub guidance_interval: Option<Option<[f64; 2]>>,
    pub guidance_rescale: Option<f64>,
    pub seed: Option<u64>,
    /// Image width and height in pixels (default: the model's own size).
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub format: Option<String>,
}

/// A present field (even `null`) is Some; an absent one stays None (serde's default).
fn interval<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<[f64; 2]>>, D::Error> {
    Option::<[f64; 2]>::deserialize(d).map(Some)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Png,
    Json,
}

/// Longest prompt accepted, in characters (CLIP reads 75 tokens of it; the rest is dropped with
/// a warning in the server's log).
pub const MAX_PROMPT_CHARS: usize = 2000;

/// A validated request.
#[derive(Debug, Clone)]
pub struct Generate {
    /// A class, a prompt, or `Unconditional` (the null class, the empty prompt or an
    /// unconditional model).
    pub condition: Condition,
    /// A negative prompt (text models only).
    pub negative: Option<String>,
    pub n: usize,
    pub sampler: SamplerConfig,
    pub seed: u64,
    /// (height, width) in pixels; None: the model's own size.
    pub size: Option<[i64; 2]>,
    pub format: Format,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    fn new(field: &str, message: String) -> FieldError {
        FieldError { field: field.to_string(), message }
    }
}

/// Parses the body; unknown fields and wrong types name the field.
pub fn parse(bytes: &[u8]) -> Result<GenerateBody, FieldError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(GenerateBody::default());
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.to_string();
        // serde names an unknown field in its message, not in the path.
        let field = if path == "." { msg.split('`').nth(1).unwrap_or("body").to_string() } else { path };
        FieldError::new(&field, msg)
    })
}

/// The image sizes a model generates: its own, or (where its family allows other sizes) any
/// whose sides are multiples of `multiple`, up to the server's `max_side`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeRule {
    /// (height, width).
    pub own: [i64; 2],
    pub multiple: Option<i64>,
    pub max_side: i64,
}

impl SizeRule {
    /// Whether the model generates images of `size` (height, width); the error names the field.
    pub fn check(&self, size: [i64; 2]) -> Result<(), FieldError> {
        if size == self.own {
            return Ok(());
        }
        let [own_h, own_w] = self.own;
        let Some(m) = self.multiple else {
            let field = if size[1] != own_w { "width" } else { "height" };
            return Err(FieldError::new(field, format!("this model generates only {own_w}x{own_h} images")));
        };
        let largest = self.max_side - self.max_side % m;
        for (field, v) in [("width", size[1]), ("height", size[0])] {
            if !(m..=largest).contains(&v) || v % m != 0 {
                return Err(FieldError::new(field, format!("{v}: expected a multiple of {m} from {m} to {largest}")));
            }
        }
        Ok(())
    }

    /// The size a request asks for: None for the model's own.
    fn resolve(&self, width: Option<i64>, height: Option<i64>) -> Result<Option<[i64; 2]>, FieldError> {
        let size = [height.unwrap_or(self.own[0]), width.unwrap_or(self.own[1])];
        self.check(size)?;
        Ok((size != self.own).then_some(size))
    }
}

pub struct Limits<'a> {
    pub serve: &'a ServeConfig,
    /// What the loaded model can be asked for.
    pub kind: ConditionKind,
    pub size: SizeRule,
    pub defaults: &'a SamplerConfig,
    pub timesteps: usize,
}

pub fn validate(body: GenerateBody, limits: &Limits, fresh_seed: u64) -> Result<Generate, FieldError> {
    let s = limits.serve;
    let condition = condition(&body, limits.kind)?;
    let negative = match (body.negative_prompt, limits.kind) {
        (None, _) => None,
        (Some(_), ConditionKind::Nothing | ConditionKind::Classes(_)) => {
            return Err(FieldError::new("negative_prompt", "this model is not conditioned on text: omit `negative_prompt`".into()));
        }
        (Some(p), ConditionKind::Text) => Some(checked_prompt("negative_prompt", p)?),
    };
    let n = body.n.unwrap_or(1);
    if !(1..=s.max_images).contains(&n) {
        return Err(FieldError::new("n", format!("{n} is out of range: expected 1..={}", s.max_images)));
    }
    let mut sampler = limits.defaults.clone();
    if let Some(steps) = body.steps {
        let max = s.max_steps.min(limits.timesteps);
        if !(1..=max).contains(&steps) {
            return Err(FieldError::new("steps", format!("{steps} is out of range: expected 1..={max}")));
        }
        sampler.steps = steps;
    }
    if let Some(name) = &body.sampler {
        sampler.sampler = SamplerKind::parse(name).ok_or_else(|| FieldError::new("sampler", format!("\"{name}\": expected {}", SamplerKind::expected())))?;
    }
    if let Some(g) = body.guidance {
        if !(g.is_finite() && (0.0..=s.max_guidance).contains(&g)) {
            return Err(FieldError::new("guidance", format!("{g} is out of range: expected 0..={}", s.max_guidance)));
        }
        sampler.guidance = g;
    }
    if let Some(interval) = body.guidance_interval {
        sampler.guidance_interval = interval;
    }
    if let Some(r) = body.guidance_rescale {
        sampler.guidance_rescale = r;
    }
    sampler.validate(limits.timesteps).map_err(|e| FieldError::new(e.key.trim_start_matches("sample."), e.to_string()))?;
    let format = match body.format.as_deref() {
        None | Some("png") => Format::Png,
        Some("json") => Format::Json,
        Some(other) => return Err(FieldError::new("format", format!("\"{other}\": expected \"png\" or \"json\""))),
    };
    let size = limits.size.resolve(body.width, body.height)?;
    Ok(Generate { condition, negative, n, sampler, seed: body.seed.unwrap_or(fresh_seed), size, format })
}

/// What the request asks the model for: a class of a class-conditional model, a prompt of a
/// text model, or nothing.
fn condition(body: &GenerateBody, kind: ConditionKind) -> Result<Condition, FieldError> {
    match (body.class, &body.prompt, kind) {
        (Some(_), Some(_), _) => Err(FieldError::new("prompt", "give `class` or `prompt`, not both".into())),
        (None, None, _) => Ok(Condition::Unconditional),
        (Some(_), None, ConditionKind::Nothing) => Err(FieldError::new("class", "this model is unconditional: omit `class`".into())),
        (Some(_), None, ConditionKind::Text) => Err(FieldError::new("class", "this model is conditioned on text: give a `prompt` instead".into())),
        (Some(c), None, ConditionKind::Classes(k)) if !(0..k).contains(&c) => {
            Err(FieldError::new("class", format!("{c} is out of range: expected 0..={} (or omit it for an unconditional sample)", k - 1)))
        }
        (Some(c), None, ConditionKind::Classes(_)) => Ok(Condition::Class(c)),
        (None, Some(_), ConditionKind::Nothing | ConditionKind::Classes(_)) => {
            Err(FieldError::new("prompt", "this model is not conditioned on text: omit `prompt` (class-conditional models take `class`)".into()))
        }
        (None, Some(p), ConditionKind::Text) => Ok(Condition::Text(checked_prompt("prompt", p.clone())?)),
    }
}

fn checked_prompt(field: &str, prompt: String) -> Result<String, FieldError> {
    let chars = prompt.chars().count();
    if chars > MAX_PROMPT_CHARS {
        return Err(FieldError::new(field, format!("{chars} characters: expected at most {MAX_PROMPT_CHARS}")));
    }
    Ok(prompt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits<'a>(serve: &'a ServeConfig, defaults: &'a SamplerConfig) -> Limits<'a> {
        Limits { serve, kind: ConditionKind::Classes(10), size: SizeRule { own: [8, 8], multiple: None, max_side: 2048 }, defaults, timesteps: 1000 }
    }

    #[test]
    fn fields_are_checked_and_named() {
        let (serve, defaults) = (ServeConfig::default(), SamplerConfig::default());
        let l = limits(&serve, &defaults);
        let err = |json: &str| match parse(json.as_bytes()) {
            Err(e) => e,
            Ok(b) => validate(b, &l, 1).unwrap_err(),
        };
        assert_eq!(err(r#"{"class": 10}"#).field, "class");
        assert_eq!(err(r#"{"n": 0}"#).field, "n");
        assert_eq!(err(r#"{"n": 17}"#).field, "n");
        assert_eq!(err(r#"{"steps": 0}"#).field, "steps");
        assert_eq!(err(r#"{"sampler": "heun"}"#).field, "sampler");
        assert_eq!(err(r#"{"guidance": -1}"#).field, "guidance");
        assert_eq!(err(r#"{"format": "gif"}"#).field, "format");
        assert_eq!(err(r#"{"guidance_interval": [2, 1]}"#).field, "guidance_interval");
        assert_eq!(err(r#"{"guidance_rescale": 2}"#).field, "guidance_rescale");
        assert_eq!(err(r#"{"n": "three"}"#).field, "n");
        assert_eq!(err(r#"{"colour": 1}"#).field, "colour");
        assert_eq!(err(r#"{"prompt": "a red circle"}"#).field, "prompt");
        assert_eq!(err(r#"{"negative_prompt": "blue"}"#).field, "negative_prompt");
        assert_eq!(err(r#"{"width": 16}"#).field, "width", "a pixel model has one size");
        assert_eq!(validate(parse(br#"{"width": 8, "height": 8}"#).unwrap(), &l, 1).unwrap().size, None, "its own size");
        let ok = validate(parse(br#"{"class": 3, "n": 2, "seed": 9, "steps": 5, "format": "json"}"#).unwrap(), &l, 1).unwrap();
        assert_eq!((ok.condition, ok.n, ok.seed, ok.sampler.steps, ok.format), (Condition::Class(3), 2, 9, 5, Format::Json));
        assert_eq!(validate(GenerateBody::default(), &l, 77).unwrap().seed, 77);
    }

    #[test]
    fn text_models_take_prompts() {
        let (serve, defaults) = (ServeConfig::default(), SamplerConfig::default());
        let size = SizeRule { own: [64, 64], multiple: Some(16), max_side: 100 };
        let l = Limits { serve: &serve, kind: ConditionKind::Text, size, defaults: &defaults, timesteps: 1000 };
        let check = |json: &str| validate(parse(json.as_bytes()).unwrap(), &l, 1);
        let ok = check(r#"{"prompt": "a red circle", "negative_prompt": "blurry"}"#).unwrap();
        assert_eq!((ok.condition, ok.negative.as_deref()), (Condition::Text("a red circle".into()), Some("blurry")));
        assert_eq!(check("{}").unwrap().condition, Condition::Unconditional, "the empty prompt");
        assert_eq!(check(r#"{"class": 1}"#).unwrap_err().field, "class");
        assert_eq!(check(r#"{"class": 1, "prompt": "x"}"#).unwrap_err().field, "prompt");
        let long = format!(r#"{{"prompt": "{}"}}"#, "a".repeat(MAX_PROMPT_CHARS + 1));
        assert_eq!(check(&long).unwrap_err().field, "prompt");
        assert_eq!(check(r#"{"width": 96}"#).unwrap().size, Some([64, 96]), "the height stays the model's");
        assert_eq!(check(r#"{"width": 32, "height": 96}"#).unwrap().size, Some([96, 32]));
        for (json, field) in [(r#"{"width": 40}"#, "width"), (r#"{"height": 112}"#, "height"), (r#"{"width": 0}"#, "width"), (r#"{"height": -16}"#, "height")] {
            let e = check(json).unwrap_err();
            assert_eq!(e.field, field, "{json}: {}", e.message);
        }
        assert!(check(r#"{"height": 112}"#).unwrap_err().message.contains("multiple of 16 from 16 to 96"));
    }
}
