//! LoRA files as webui, ComfyUI and diffusers users download them, merged into a Stable
//! Diffusion model's weights. Two key layouts are read:
//!
//! - kohya/webui: `lora_unet_<module path, dots as underscores>.lora_down.weight`,
//!   `.lora_up.weight` and `.alpha` (a scalar); the text encoders as `lora_te_` (SDXL:
//!   `lora_te1_`, `lora_te2_`). The underscore form is ambiguous, so it is looked up among the
//!   model's own linear and conv weights written the same way. Scale: alpha / rank (no alpha:
//!   1).
//! - diffusers/PEFT: `unet.<module path>.lora_A.weight` (down) and `.lora_B.weight` (up), and
//!   `text_encoder.`, `text_encoder_2.`. Scale: an `.alpha` key if there is one, else the
//!   `lora_adapter_metadata` diffusers writes into the safetensors header (`<network>.lora_alpha`,
//!   its `alpha_pattern` and `use_rslora`) over the rank, else 1.
//!
//! Every module then gets W += multiplier * scale * (up @ down), computed in float32 and cast
//! back to W's type; for conv layers (LoCon) down is (r, in, kh, kw) and up (out, r, 1, 1).
//! Everything is checked before any weight changes: a key that is not a LoRA key of these
//! layouts (LoHa, LoKr, DoRA, diffusers' older attention-processor keys), one that matches no
//! module, a missing half and a shape that does not fit all fail with the key; no key is
//! skipped.

use super::components::Part;
use super::lora_export;
use crate::error::ModelError;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{Kind, Tensor};

/// The key layout of a LoRA file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraFormat {
    /// kohya's sd-scripts, as the webui and ComfyUI read it: `lora_unet_…`.
    Kohya,
    /// diffusers' `save_lora_weights` (PEFT's `lora_A`/`lora_B`): `unet.…`.
    Diffusers,
}

impl LoraFormat {
    pub fn name(self) -> &'static str {
        match self {
            LoraFormat::Kohya => "kohya",
            LoraFormat::Diffusers => "diffusers",
        }
    }
}

/// What merging one file did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoraReport {
    pub path: PathBuf,
    pub format: LoraFormat,
    pub multiplier: f64,
    /// Modules patched per network (`unet`, `text_encoder`, `text_encoder_2`).
    pub patched: BTreeMap<String, usize>,
}

impl LoraReport {
    /// Modules patched in all networks.
    pub fn modules(&self) -> usize {
        self.patched.values().sum()
    }
}

impl std::fmt::Display for LoraReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.patched.iter().map(|(net, n)| format!("{net} {n}")).collect();
        write!(f, "{} ({} format, scale {}): modules patched: {}", self.path.display(), self.format.name(), self.multiplier, parts.join(", "))
    }
}

/// What a key of the file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Down,
    Up,
    Alpha,
}

/// A module's key stem and what the key holds, for the two layouts' suffixes.
pub(super) fn split_key(key: &str) -> Option<(&str, Role)> {
    const SUFFIXES: [(&str, Role); 5] = [
        (".lora_down.weight", Role::Down),
        (".lora_up.weight", Role::Up),
        (".lora_A.weight", Role::Down),
        (".lora_B.weight", Role::Up),
        (".alpha", Role::Alpha),
    ];
    SUFFIXES.iter().find_map(|(suffix, role)| key.strip_suffix(suffix).map(|stem| (stem, *role)))
}

/// Why a key that is not one of ours is not read, in words.
fn unsupported(key: &str) -> String {
    let what = if key.contains("hada_") {
        "a LoHa (LyCORIS) key"
    } else if key.contains("lokr_") {
        "a LoKr (LyCORIS) key"
    } else if key.contains(".lora_mid.") {
        "a LoCon key with a Tucker middle (lora_mid)"
    } else if key.contains("dora_scale") || key.contains("lora_magnitude_vector") {
        "a DoRA key"
    } else if key.contains("_lora.down.") || key.contains("_lora.up.") || key.contains(".processor.") {
        "diffusers' older attention-processor format (`…processor.to_q_lora.down.weight`)"
    } else if key.ends_with(".diff") || key.ends_with(".diff_b") || key.ends_with(".bias") {
        "a full weight or bias difference"
    } else {
        "an unsupported key format"
    };
    format!(
        "`{key}`: {what}; difforge reads kohya keys (`lora_unet_…`/`lora_te_…` with `.lora_down.weight`, `.lora_up.weight`, `.alpha`) \
         and diffusers/PEFT keys (`unet.…`/`text_encoder.…` with `.lora_A.weight`, `.lora_B.weight`)"
    )
}

/// One network the file may patch: its linear and conv weights by name, and those names in
/// kohya's underscore form.
struct Network {
    part: Part,
    kohya_prefixes: &'static [&'static str],
    weights: HashMap<String, Tensor>,
    /// kohya name without prefix (`down_blocks_0_..._to_q`) -> variable names (more than one:
    /// ambiguous).
    kohya: HashMap<String, Vec<String>>,
}

impl Network {
    fn new(part: Part, vars: &VarStore) -> Network {
        let kohya_prefixes: &'static [&'static str] = match part {
            Part::Unet => &["lora_unet_"],
            Part::TextEncoder => &["lora_te_", "lora_te1_"],
            Part::TextEncoder2 => &["lora_te2_"],
            Part::Vae => &[],
        };
        let weights: HashMap<String, Tensor> = vars.variables().into_iter().filter(|(name, t)| name.ends_with(".weight") && matches!(t.dim(), 2 | 4)).collect();
        let mut kohya: HashMap<String, Vec<String>> = HashMap::new();
        for name in weights.keys() {
            let module = name.strip_suffix(".weight").unwrap_or(name);
            kohya.entry(module.replace('.', "_")).or_default().push(name.clone());
        }
        Network { part, kohya_prefixes, weights, kohya }
    }

    /// The variable a module path names (`down_blocks.0.….to_q`).
    fn by_path(&self, path: &str) -> Option<String> {
        let name = format!("{path}.weight");
        self.weights.contains_key(&name).then_some(name)
    }

    /// The module name of this network nearest to `wanted` (the longest shared beginning and
    /// end), for error messages.
    fn nearest<'a>(names: impl Iterator<Item = &'a String>, wanted: &str) -> Option<&'a String> {
        let shared = |a: &str| {
            let start = a.bytes().zip(wanted.bytes()).take_while(|(x, y)| x == y).count();
            let end = a.bytes().rev().zip(wanted.bytes().rev()).take_while(|(x, y)| x == y).count();
            (start + end).min(a.len().min(wanted.len()))
        };
        names.max_by(|a, b| shared(a).cmp(&shared(b)).then_with(|| b.cmp(a)))
    }
}

/// A module of the file: its two halves and alpha, and the weight they patch.
struct Module {
    network: usize,
    variable: String,
    format: LoraFormat,
    down: Option<Tensor>,
    up: Option<Tensor>,
    alpha: Option<f64>,
}

/// The safetensors header entry where diffusers keeps its PEFT adapter configs.
pub(super) const ADAPTER_METADATA: &str = "lora_adapter_metadata";

/// The `__metadata__` of a safetensors file's header (empty when it has none).
fn read_metadata(path: &Path) -> Result<HashMap<String, String>, ModelError> {
    let bad = |reason: String| ModelError::checkpoint(path, format!("not a safetensors file ({reason}); difforge reads LoRA files as .safetensors"));
    let mut file = std::fs::File::open(path).map_err(|e| ModelError::checkpoint(path, e.to_string()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| bad(e.to_string()))?;
    let len = u64::from_le_bytes(len);
    if len > 100_000_000 {
        return Err(bad(format!("a header of {len} bytes")));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(|e| bad(e.to_string()))?;
    let header: Value = serde_json::from_slice(&header).map_err(|e| bad(e.to_string()))?;
    let metadata = header.get("__metadata__").and_then(Value::as_object);
    Ok(metadata.map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect()).unwrap_or_default())
}

/// diffusers' adapter config (`lora_adapter_metadata`, keys `<network>.lora_alpha`, ...).
struct AdapterConfig(serde_json::Map<String, Value>);

impl AdapterConfig {
    fn read(path: &Path, metadata: &HashMap<String, String>) -> Result<AdapterConfig, ModelError> {
        let Some(text) = metadata.get(ADAPTER_METADATA) else { return Ok(AdapterConfig(Default::default())) };
        let value: Value = serde_json::from_str(text).map_err(|e| ModelError::checkpoint(path, format!("its lora_adapter_metadata is not valid JSON: {e}")))?;
        let Value::Object(map) = value else { return Err(ModelError::checkpoint(path, "its lora_adapter_metadata is not a JSON object")) };
        let config = AdapterConfig(map);
        config.check().map_err(|why| ModelError::checkpoint(path, format!("its lora_adapter_metadata: {why}")))?;
        Ok(config)
    }

    /// The values that scale the update: alphas (plain and per pattern) finite and positive,
    /// ranks whole and positive, `use_rslora` a boolean; the key is named.
    fn check(&self) -> Result<(), String> {
        let alpha_ok = |v: &Value| v.as_f64().is_some_and(|a| a.is_finite() && a > 0.0 && a <= 1e6);
        let rank_ok = |v: &Value| v.as_u64().is_some_and(|r| (1..=65536).contains(&r));
        for (key, value) in &self.0 {
            let field = key.rsplit('.').next().unwrap_or(key);
            let bad = |expected: &str| Err(format!("`{key}` = {value}: expected {expected}"));
            let each = |v: &Value, ok: &dyn Fn(&Value) -> bool| v.as_object().is_some_and(|m| m.values().all(ok));
            match field {
                "lora_alpha" if !alpha_ok(value) => return bad("a positive number (at most 1e6)"),
                "r" if !rank_ok(value) => return bad("a whole number in 1..=65536"),
                "alpha_pattern" if !each(value, &alpha_ok) => return bad("an object of positive numbers"),
                "rank_pattern" if !each(value, &rank_ok) => return bad("an object of whole numbers in 1..=65536"),
                "use_rslora" if !value.is_boolean() => return bad("true or false"),
                _ => {}
            }
        }
        Ok(())
    }

    /// Scale for a module of `part` at `module_path` with rank `rank`, if the config gives an
    /// alpha (PEFT: `alpha_pattern` keys match the end of the module path; rsLoRA divides by
    /// the square root of the rank).
    fn scale(&self, part: Part, module_path: &str, rank: i64) -> Option<f64> {
        let get = |key: &str| self.0.get(&format!("{}.{key}", part.folder()));
        let pattern = get("alpha_pattern").and_then(Value::as_object).and_then(|patterns| {
            patterns.iter().find(|(p, _)| module_path == p.as_str() || module_path.ends_with(&format!(".{p}"))).and_then(|(_, a)| a.as_f64())
        });
        let alpha = pattern.or_else(|| get("lora_alpha").and_then(Value::as_f64))?;
        let rslora = get("use_rslora").and_then(Value::as_bool).unwrap_or(false);
        Some(if rslora { alpha / (rank as f64).sqrt() } else { alpha / rank as f64 })
    }
}

/// A NaN or infinite value in a LoRA tensor turns the whole image black: refused by key.
fn check_finite(key: &str, tensor: &Tensor) -> Result<(), String> {
    let bad = tensor.isfinite().logical_not().sum(Kind::Int64).int64_value(&[]);
    if bad > 0 {
        return Err(format!("`{key}`: {bad} of its {} values are NaN or infinite", tensor.numel()));
    }
    Ok(())
}

/// Shapes as `[a, b, c]`.
pub(super) fn shape(t: &Tensor) -> String {
    format!("{:?}", t.size())
}

/// The rank if down and up fit a weight of shape `w`: up (out, r) or (out, r, 1, 1); down
/// (r, in) or (r, in, kh, kw) with the weight's kernel (or none for a 1x1 kernel).
fn rank_if_fits(w: &[i64], down: &[i64], up: &[i64]) -> Option<i64> {
    let r = *down.first()?;
    let up_ok = match up {
        [out, ur] | [out, ur, 1, 1] => *out == w[0] && *ur == r,
        _ => false,
    };
    let down_ok = match (w, down) {
        ([_, i], [_, di]) | ([_, i], [_, di, 1, 1]) | ([_, i, 1, 1], [_, di]) => i == di,
        ([_, i, kh, kw], [_, di, dh, dw]) => (i, kh, kw) == (di, dh, dw),
        _ => false,
    };
    (up_ok && down_ok && r > 0).then_some(r)
}

/// A LoRA file read and checked against the networks it is for: every module's weight, halves,
/// rank and scale (alpha / rank, or the file's adapter config's, or 1).
struct Plan {
    format: LoraFormat,
    modules: Vec<PlannedModule>,
}

struct PlannedModule {
    part: Part,
    /// The variable the update adds to (`….to_q.weight`).
    variable: String,
    weight: Tensor,
    down: Tensor,
    up: Tensor,
    rank: i64,
    scale: f64,
}

/// Reads the LoRA file at `path` and fits every module to `networks` (the VAE is never a
/// target); errors name the key.
fn plan(path: &Path, networks: &[(Part, &VarStore)]) -> Result<Plan, ModelError> {
    let err = |reason: String| ModelError::checkpoint(path, reason);
    let metadata = read_metadata(path)?;
    let config = AdapterConfig::read(path, &metadata)?;
    let tensors = Tensor::read_safetensors(path).map_err(|e| err(e.to_string()))?;
    let nets: Vec<Network> = networks.iter().filter(|(p, _)| *p != Part::Vae).map(|(p, v)| Network::new(*p, v)).collect();
    let mut modules: BTreeMap<String, Module> = BTreeMap::new();
    for (key, tensor) in tensors {
        let (stem, role) = split_key(&key).ok_or_else(|| err(unsupported(&key)))?;
        if !modules.contains_key(stem) {
            let (network, variable, format) = resolve(&nets, stem).map_err(|reason| err(format!("`{key}`: {reason}")))?;
            modules.insert(stem.to_string(), Module { network, variable, format, down: None, up: None, alpha: None });
        }
        let Some(module) = modules.get_mut(stem) else { continue };
        check_finite(&key, &tensor).map_err(err)?;
        match role {
            Role::Down => module.down = Some(tensor),
            Role::Up => module.up = Some(tensor),
            Role::Alpha => {
                if tensor.numel() != 1 {
                    return Err(err(format!("`{key}`: alpha should be one number, not a tensor of shape {}", shape(&tensor))));
                }
                let alpha = tensor.to_kind(Kind::Double).double_value(&[]);
                if !alpha.is_finite() {
                    return Err(err(format!("`{key}`: alpha is {alpha}")));
                }
                module.alpha = Some(alpha);
            }
        }
    }
    if modules.is_empty() {
        return Err(err("no LoRA tensors in the file".into()));
    }
    let format = modules.values().next().map_or(LoraFormat::Kohya, |m| m.format);
    if modules.values().any(|m| m.format != format) {
        return Err(err("both kohya (`lora_unet_…`) and diffusers (`unet.…`) keys in one file".into()));
    }
    let mut planned = Vec::with_capacity(modules.len());
    for (stem, module) in modules {
        let (down, up) = match (module.down, module.up) {
            (Some(d), Some(u)) => (d, u),
            (Some(_), None) => return Err(err(format!("`{stem}`: the file has its down weight but no up weight"))),
            (None, Some(_)) => return Err(err(format!("`{stem}`: the file has its up weight but no down weight"))),
            (None, None) => return Err(err(format!("`{stem}`: the file has only an alpha, no down and up weights"))),
        };
        let net = &nets[module.network];
        let weight = net.weights[&module.variable].shallow_clone();
        let rank = rank_if_fits(&weight.size(), &down.size(), &up.size()).ok_or_else(|| {
            err(format!(
                "`{stem}`: LoRA down {} and up {} do not fit `{}` of shape {} in {}",
                shape(&down),
                shape(&up),
                module.variable,
                shape(&weight),
                net.part.folder()
            ))
        })?;
        let module_path = module.variable.strip_suffix(".weight").unwrap_or(&module.variable);
        let scale = match (module.alpha, module.format) {
            (Some(alpha), _) => alpha / rank as f64,
            (None, LoraFormat::Diffusers) => config.scale(net.part, module_path, rank).unwrap_or(1.0),
            (None, LoraFormat::Kohya) => 1.0,
        };
        planned.push(PlannedModule { part: net.part, variable: module.variable, weight, down, up, rank, scale });
    }
    Ok(Plan { format, modules: planned })
}

/// Merges the LoRA file at `path` into `networks` (each network's part and variables; the VAE
/// is never a target), `multiplier` times the file's own scale. Nothing changes unless every
/// key of the file is understood and fits.
pub fn apply(path: &Path, multiplier: f64, networks: &[(Part, &VarStore)]) -> Result<LoraReport, ModelError> {
    if !multiplier.is_finite() {
        return Err(ModelError::Config(difforge_core::ConfigError::new("LoRA scale", multiplier, "a finite number")));
    }
    // Checked first: the model changes only when all of the file fits.
    let plan = plan(path, networks)?;
    let mut patched = BTreeMap::new();
    for m in &plan.modules {
        *patched.entry(m.part.folder().to_string()).or_insert(0) += 1;
        if multiplier == 0.0 {
            continue;
        }
        tch::no_grad(|| {
            let size = m.weight.size();
            let up = m.up.to_device(m.weight.device()).to_kind(Kind::Float).reshape([size[0], m.rank]);
            let down = m.down.to_device(m.weight.device()).to_kind(Kind::Float).reshape([m.rank, -1]);
            let delta = up.matmul(&down).reshape(size.as_slice()) * (m.scale * multiplier);
            let merged = m.weight.to_kind(Kind::Float) + delta;
            let mut weight = m.weight.shallow_clone();
            weight.copy_(&merged);
        });
    }
    tracing::debug!(path = %path.display(), format = plan.format.name(), modules = plan.modules.len(), "merged a LoRA file");
    Ok(LoraReport { path: path.to_path_buf(), format: plan.format, multiplier, patched })
}

/// Writes the LoRA file at `path` (either layout) to `out` in `format`: the same modules with
/// the same updates. `networks` (the base the file is for) resolve kohya's underscore names.
/// The file's modules must share one rank; a module whose alpha differs from the first's has
/// its up weight scaled so that every update stays what it was. Returns the module count.
pub fn convert(path: &Path, networks: &[(Part, &VarStore)], format: LoraFormat, out: &Path) -> Result<usize, ModelError> {
    let plan = plan(path, networks)?;
    let first = &plan.modules[0];
    if let Some(m) = plan.modules.iter().find(|m| m.rank != first.rank) {
        return Err(ModelError::checkpoint(
            path,
            format!("`{}` has rank {} and `{}` rank {}: only files of one rank convert", first.variable, first.rank, m.variable, m.rank),
        ));
    }
    let (rank, scale) = (first.rank, first.scale);
    let mut by_part: BTreeMap<&'static str, (Part, lora_export::Named)> = BTreeMap::new();
    for m in &plan.modules {
        let module = m.variable.strip_suffix(".weight").unwrap_or(&m.variable);
        let (down, up) = halves_shaped_like(m);
        let entry = by_part.entry(m.part.folder()).or_insert_with(|| (m.part, Vec::new()));
        entry.1.push((format!("{module}.lora_down.weight"), down));
        entry.1.push((format!("{module}.lora_up.weight"), up * (m.scale / scale)));
    }
    let adapters: Vec<lora_export::NetworkAdapters> =
        by_part.values().map(|(part, variables)| lora_export::NetworkAdapters { part: *part, variables }).collect();
    let from = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let export = lora_export::LoraExport {
        rank,
        alpha: scale * rank as f64,
        metadata: vec![("ss_training_comment".into(), format!("converted by difforge from {from}"))],
    };
    lora_export::export(out, format, &adapters, &export)
}

/// A module's halves in float32, shaped as the layouts write them for its weight: (r, in) and
/// (out, r) for a linear layer, (r, in, kh, kw) and (out, r, 1, 1) for a convolution.
fn halves_shaped_like(m: &PlannedModule) -> (Tensor, Tensor) {
    let size = m.weight.size();
    let (down, up) = (m.down.to_kind(Kind::Float), m.up.to_kind(Kind::Float));
    match size.as_slice() {
        [out, cin, kh, kw] => (down.reshape([m.rank, *cin, *kh, *kw]), up.reshape([*out, m.rank, 1, 1])),
        [out, cin] => (down.reshape([m.rank, *cin]), up.reshape([*out, m.rank])),
        _ => (down, up),
    }
}

/// The network, variable and layout of a key's module stem, or why there is none.
fn resolve(nets: &[Network], stem: &str) -> Result<(usize, String, LoraFormat), String> {
    // diffusers: `unet.<path>`, `text_encoder.<path>`, `text_encoder_2.<path>`.
    if let Some((folder, path)) = stem.split_once('.') {
        if let Some(i) = nets.iter().position(|n| n.part.folder() == folder) {
            let net = &nets[i];
            return match net.by_path(path) {
                Some(variable) => Ok((i, variable, LoraFormat::Diffusers)),
                None => {
                    let names = net.weights.keys().filter(|n| !n.ends_with("_embedding.weight"));
                    let near = Network::nearest(names, path).map(|n| format!("; the nearest is `{folder}.{}`", n.trim_end_matches(".weight")));
                    Err(format!("no linear or conv module `{path}` in the {folder}{}{}", near.unwrap_or_default(), ldm_hint(path)))
                }
            };
        }
        if ["unet", "text_encoder", "text_encoder_2"].contains(&folder) {
            return Err(format!("this model has no {folder} (a LoRA for another family?)"));
        }
    }
    // kohya: `lora_unet_…`, `lora_te_…` (`lora_te1_`, `lora_te2_`).
    for (i, net) in nets.iter().enumerate() {
        for prefix in net.kohya_prefixes {
            let Some(rest) = stem.strip_prefix(prefix) else { continue };
            return match net.kohya.get(rest).map(Vec::as_slice) {
                Some([variable]) => Ok((i, variable.clone(), LoraFormat::Kohya)),
                Some(many) => Err(format!("matches more than one module of the {}: {}", net.part.folder(), many.join(", "))),
                None => {
                    let names = net.kohya.keys().filter(|n| !n.ends_with("_embedding"));
                    let near = Network::nearest(names, rest).map(|n| format!("; the nearest is `{prefix}{n}`"));
                    Err(format!("matches no linear or conv module of the {}{}{}", net.part.folder(), near.unwrap_or_default(), ldm_hint(rest)))
                }
            };
        }
    }
    if stem.starts_with("lora_te2_") {
        return Err("this model has no second text encoder (an SDXL LoRA?)".into());
    }
    Err(format!(
        "matches no network: module keys start with `lora_unet_`, `lora_te_` (SDXL `lora_te1_`, `lora_te2_`), `unet.`, `text_encoder.` or `text_encoder_2.`{}",
        if stem.starts_with("base_model.model.") { " (a bare PEFT adapter: rename `base_model.model.` to `unet.`)" } else { "" }
    ))
}

/// A note for module names of the original (LDM) layout.
fn ldm_hint(name: &str) -> &'static str {
    if ["input_blocks", "output_blocks", "middle_block"].iter().any(|b| name.contains(b)) {
        " (original LDM module names such as input_blocks are not supported; diffusers names are)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_fit_linear_conv_and_one_by_one_weights() {
        assert_eq!(rank_if_fits(&[8, 6], &[4, 6], &[8, 4]), Some(4));
        assert_eq!(rank_if_fits(&[8, 6, 3, 3], &[4, 6, 3, 3], &[8, 4, 1, 1]), Some(4));
        assert_eq!(rank_if_fits(&[8, 6, 1, 1], &[4, 6], &[8, 4]), Some(4));
        assert_eq!(rank_if_fits(&[8, 6], &[4, 6, 1, 1], &[8, 4, 1, 1]), Some(4));
        assert_eq!(rank_if_fits(&[8, 6], &[4, 7], &[8, 4]), None);
        assert_eq!(rank_if_fits(&[8, 6], &[4, 6], &[8, 3]), None);
        assert_eq!(rank_if_fits(&[8, 6, 3, 3], &[4, 6], &[8, 4]), None);
        assert_eq!(rank_if_fits(&[8, 6, 3, 3], &[4, 6, 3, 3], &[8, 4, 3, 3]), None);
    }

    #[test]
    fn keys_split_into_module_and_role() {
        assert_eq!(split_key("lora_unet_a_b.lora_down.weight"), Some(("lora_unet_a_b", Role::Down)));
        assert_eq!(split_key("unet.a.b.lora_B.weight"), Some(("unet.a.b", Role::Up)));
        assert_eq!(split_key("lora_te_x.alpha"), Some(("lora_te_x", Role::Alpha)));
        assert_eq!(split_key("unet.a.processor.to_q_lora.down.weight"), None);
        assert!(unsupported("unet.a.processor.to_q_lora.down.weight").contains("older attention-processor"));
        assert!(unsupported("lora_unet_a.hada_w1_a").contains("LoHa"));
    }
}
