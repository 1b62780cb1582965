//! LoRA adapters trained by difforge on a Stable Diffusion model, written as the files webui,
//! ComfyUI and diffusers load: the two layouts `lora_file` reads back (see there).
//!
//! - kohya: `lora_unet_<module path, dots as underscores>.lora_down.weight`, `.lora_up.weight`
//!   and `.alpha` per module (`lora_te_`, SDXL `lora_te1_`/`lora_te2_`), and the `ss_network_*`
//!   header entries kohya's sd-scripts write.
//! - diffusers: `unet.<module path>.lora_A.weight` (down) and `.lora_B.weight` (up)
//!   (`text_encoder.`, `text_encoder_2.`), with per network the PEFT config diffusers'
//!   `save_lora_weights` writes into the `lora_adapter_metadata` header entry: without it
//!   `load_lora_weights` would scale by 1 instead of alpha / rank.
//!
//! Tensors are written as contiguous float32, whatever they were trained in: the file then
//! holds exactly the trained numbers (float16 would round them, and the delta with them); users
//! who want half the size can convert.

use super::components::Part;
use super::lora_file::{shape, split_key, LoraFormat, Role, ADAPTER_METADATA};
use crate::error::ModelError;
use difforge_core::ConfigError;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::Tensor;

/// One network's adapters: the network and its (variable name, tensor) pairs, named by module
/// path plus `.lora_down.weight` (rank, in) or (rank, in, kh, kw) and `.lora_up.weight`
/// (out, rank) or (out, rank, 1, 1), as training names them (PEFT's `.lora_A.weight` /
/// `.lora_B.weight` are read as down / up too).
pub struct NetworkAdapters<'a> {
    pub part: Part,
    pub variables: &'a [(String, Tensor)],
}

/// What every module of the file shares, and header entries of the caller's.
#[derive(Debug, Clone)]
pub struct LoraExport {
    pub rank: i64,
    /// Loaders scale each update by alpha / rank.
    pub alpha: f64,
    /// Extra header entries (`ss_base_model_version`, ...); they may not replace ours.
    pub metadata: Vec<(String, String)>,
}

/// One adapted module, checked: both halves with the export's rank.
struct Adapter<'a> {
    /// The key prefix of its network (`lora_unet_` or `unet.`).
    prefix: &'static str,
    part: Part,
    module: &'a str,
    down: &'a Tensor,
    up: &'a Tensor,
}

impl Adapter<'_> {
    /// A 3x3 (or larger) conv: kohya records those in `ss_network_args` (LoCon).
    fn is_wide_conv(&self) -> bool {
        self.down.size().get(2..).is_some_and(|k| k.iter().any(|&d| d > 1))
    }
}

/// Writes `adapters` to `path` (atomically) in `format`; returns the number of modules.
/// Nothing is written unless every variable pairs up and fits `export.rank`; errors name the
/// variable.
pub fn export(path: &Path, format: LoraFormat, adapters: &[NetworkAdapters], export: &LoraExport) -> Result<usize, ModelError> {
    check_settings(export)?;
    let err = |reason: String| ModelError::checkpoint(path, reason);
    let modules = pair(format, adapters, export.rank).map_err(err)?;
    let metadata = match format {
        LoraFormat::Kohya => kohya_metadata(&modules, export),
        LoraFormat::Diffusers => diffusers_metadata(&modules, export),
    };
    let metadata = with_callers(metadata, &export.metadata).map_err(err)?;
    let tensors = tch::no_grad(|| tensors(format, &modules, export.alpha));
    difforge_nn::weights::save_with_metadata(path, &tensors, &metadata)?;
    tracing::debug!(path = %path.display(), format = format.name(), modules = modules.len(), "wrote a LoRA file");
    Ok(modules.len())
}

/// Named tensors, as training holds them.
pub type Named = Vec<(String, Tensor)>;

/// The variables named `<prefix><name>` (as `name`: a network trained beside another keeps its
/// variables under a prefix) and the others, in their order.
pub fn split_prefixed(variables: &[(String, Tensor)], prefix: &str) -> (Named, Named) {
    let (mut prefixed, mut others) = (Vec::new(), Vec::new());
    for (name, t) in variables {
        match name.strip_prefix(prefix) {
            Some(key) => prefixed.push((key.to_string(), t.shallow_clone())),
            None => others.push((name.clone(), t.shallow_clone())),
        }
    }
    (prefixed, others)
}

/// Rank and alpha as every loader needs them: alpha / rank is each module's scale.
fn check_settings(export: &LoraExport) -> Result<(), ConfigError> {
    if export.rank < 1 {
        return Err(ConfigError::new("LoRA rank", export.rank, "a positive number"));
    }
    if !(export.alpha.is_finite() && export.alpha > 0.0) {
        return Err(ConfigError::new("LoRA alpha", export.alpha, "a positive number"));
    }
    Ok(())
}

/// The key prefix of a network's modules; SDXL's first text encoder is `lora_te1_` in kohya's
/// layout. None: the VAE, which no LoRA loader patches.
fn prefix(format: LoraFormat, part: Part, two_encoders: bool) -> Option<&'static str> {
    Some(match (format, part) {
        (_, Part::Vae) => return None,
        (LoraFormat::Kohya, Part::Unet) => "lora_unet_",
        (LoraFormat::Kohya, Part::TextEncoder) if two_encoders => "lora_te1_",
        (LoraFormat::Kohya, Part::TextEncoder) => "lora_te_",
        (LoraFormat::Kohya, Part::TextEncoder2) => "lora_te2_",
        (LoraFormat::Diffusers, Part::Unet) => "unet.",
        (LoraFormat::Diffusers, Part::TextEncoder) => "text_encoder.",
        (LoraFormat::Diffusers, Part::TextEncoder2) => "text_encoder_2.",
    })
}

/// The halves of each network's variables paired by module, checked, in key order.
fn pair<'a>(format: LoraFormat, adapters: &'a [NetworkAdapters], rank: i64) -> Result<Vec<Adapter<'a>>, String> {
    let two_encoders = adapters.iter().any(|a| a.part == Part::TextEncoder2);
    let mut modules = Vec::new();
    for (i, net) in adapters.iter().enumerate() {
        let folder = net.part.folder();
        if adapters[..i].iter().any(|a| a.part == net.part) {
            return Err(format!("the adapters of the {folder} are given twice"));
        }
        let prefix = prefix(format, net.part, two_encoders).ok_or_else(|| format!("LoRA files hold no {folder} adapters"))?;
        for (module, halves) in halves(net.variables).map_err(|reason| format!("{folder}: {reason}"))? {
            let (down, up) = match halves {
                [Some(down), Some(up)] => (down, up),
                [Some((name, _)), None] => return Err(format!("{folder}: `{name}` is a down weight without `{module}.lora_up.weight`")),
                [None, Some((name, _))] => return Err(format!("{folder}: `{name}` is an up weight without `{module}.lora_down.weight`")),
                [None, None] => continue,
            };
            check_pair(down, up, rank).map_err(|reason| format!("{folder}: {reason}"))?;
            modules.push(Adapter { prefix, part: net.part, module, down: &down.1, up: &up.1 });
        }
    }
    if modules.is_empty() {
        return Err("no adapters to export".into());
    }
    Ok(modules)
}

/// A network's variables by module path: [down, up].
type Halves<'a> = BTreeMap<&'a str, [Option<&'a (String, Tensor)>; 2]>;

/// The variables sorted into halves by module path, each variable once.
fn halves(variables: &[(String, Tensor)]) -> Result<Halves<'_>, String> {
    let mut halves = Halves::new();
    for var in variables {
        let half = match split_key(&var.0) {
            Some((module, Role::Down)) => halves.entry(module).or_default().get_mut(0),
            Some((module, Role::Up)) => halves.entry(module).or_default().get_mut(1),
            _ => None,
        };
        let Some(half) = half else { return Err(format!("`{}` is not a LoRA half (`….lora_down.weight` or `….lora_up.weight`)", var.0)) };
        if half.replace(var).is_some() {
            return Err(format!("`{}` is given twice", var.0));
        }
    }
    Ok(halves)
}

/// Whether down (rank, in) / (rank, in, kh, kw) and up (out, rank) / (out, rank, 1, 1) make one
/// update of the export's rank.
fn check_pair((down_name, down): &(String, Tensor), (up_name, up): &(String, Tensor), rank: i64) -> Result<(), String> {
    let fits = match (down.size().as_slice(), up.size().as_slice()) {
        ([r, _], [_, ur]) | ([r, _, _, _], [_, ur, 1, 1]) => r == ur,
        _ => false,
    };
    if !fits {
        return Err(format!(
            "`{down_name}` of shape {} and `{up_name}` of shape {} are no LoRA pair (down (rank, in) or (rank, in, kh, kw), up (out, rank) or (out, rank, 1, 1))",
            shape(down),
            shape(up)
        ));
    }
    match down.size()[0] {
        r if r == rank => Ok(()),
        r => Err(format!("`{down_name}` has rank {r}, the export's rank is {rank} (alpha / rank would scale it wrongly)")),
    }
}

/// The file's tensors: each module's halves (`save_with_metadata` writes them as contiguous
/// float32, see the module doc) and, for kohya, its alpha as a 0-d tensor.
fn tensors(format: LoraFormat, modules: &[Adapter], alpha: f64) -> Vec<(String, Tensor)> {
    let mut out = Vec::with_capacity(3 * modules.len());
    for m in modules {
        match format {
            LoraFormat::Kohya => {
                let stem = format!("{}{}", m.prefix, m.module.replace('.', "_"));
                out.push((format!("{stem}.lora_down.weight"), m.down.detach()));
                out.push((format!("{stem}.lora_up.weight"), m.up.detach()));
                out.push((format!("{stem}.alpha"), Tensor::from(alpha as f32)));
            }
            LoraFormat::Diffusers => {
                let stem = format!("{}{}", m.prefix, m.module);
                out.push((format!("{stem}.lora_A.weight"), m.down.detach()));
                out.push((format!("{stem}.lora_B.weight"), m.up.detach()));
            }
        }
    }
    out
}

/// kohya's sd-scripts header entries (numbers as Python's `str` writes them: `8.0`).
fn kohya_metadata(modules: &[Adapter], export: &LoraExport) -> HashMap<String, String> {
    let mut metadata = HashMap::from([
        ("ss_network_module".to_string(), "networks.lora".to_string()),
        ("ss_network_dim".to_string(), export.rank.to_string()),
        ("ss_network_alpha".to_string(), format!("{:?}", export.alpha)),
    ]);
    if modules.iter().any(Adapter::is_wide_conv) {
        let args = json!({"conv_dim": export.rank.to_string(), "conv_alpha": format!("{:?}", export.alpha)});
        metadata.insert("ss_network_args".into(), args.to_string());
    }
    metadata
}

/// diffusers' header: `format: pt` and, per network, the LoRA config `load_lora_weights`
/// builds PEFT's `LoraConfig` from, keys prefixed with the network's folder as diffusers'
/// `_pack_dict_with_prefix` does. These are the keys diffusers infers itself for a file without
/// metadata (`get_peft_kwargs`; it reads `rank_pattern` and `target_modules` unconditionally),
/// plus `use_rslora`; target modules are full paths, so exactly these modules get adapters.
fn diffusers_metadata(modules: &[Adapter], export: &LoraExport) -> HashMap<String, String> {
    let mut config: BTreeMap<String, Value> = BTreeMap::new();
    let mut parts: Vec<Part> = modules.iter().map(|m| m.part).collect();
    parts.dedup();
    for part in parts {
        let targets: Vec<&str> = modules.iter().filter(|m| m.part == part).map(|m| m.module).collect();
        let entries = [
            ("r", json!(export.rank)),
            ("lora_alpha", json!(export.alpha)),
            ("target_modules", json!(targets)),
            ("rank_pattern", json!({})),
            ("alpha_pattern", json!({})),
            ("use_dora", json!(false)),
            ("lora_bias", json!(false)),
            ("use_rslora", json!(false)),
        ];
        config.extend(entries.into_iter().map(|(key, value)| (format!("{}.{key}", part.folder()), value)));
    }
    // Written as diffusers writes it (`json.dumps(indent=2, sort_keys=True)`); any JSON reads.
    let config = serde_json::to_string_pretty(&config).unwrap_or_default();
    HashMap::from([("format".to_string(), "pt".to_string()), (ADAPTER_METADATA.to_string(), config)])
}

/// `ours` plus the caller's entries, which may add keys but not replace ours.
fn with_callers(mut ours: HashMap<String, String>, callers: &[(String, String)]) -> Result<HashMap<String, String>, String> {
    for (key, value) in callers {
        if ours.contains_key(key) {
            return Err(format!("header entry `{key}`: difforge writes it itself"));
        }
        ours.insert(key.clone(), value.clone());
    }
    Ok(ours)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn var(name: &str, size: &[i64]) -> (String, Tensor) {
        (name.to_string(), Tensor::zeros(size, (Kind::Float, Device::Cpu)))
    }

    #[test]
    fn pairs_are_checked_by_shape_and_rank() {
        let ok = |d: &[i64], u: &[i64]| check_pair(&var("m.lora_down.weight", d), &var("m.lora_up.weight", u), 4);
        assert!(ok(&[4, 6], &[8, 4]).is_ok());
        assert!(ok(&[4, 6, 3, 3], &[8, 4, 1, 1]).is_ok());
        assert!(ok(&[4, 6], &[8, 3]).unwrap_err().contains("no LoRA pair"));
        assert!(ok(&[4, 6, 3, 3], &[8, 4, 3, 3]).unwrap_err().contains("no LoRA pair"));
        assert!(ok(&[2, 6], &[8, 2]).unwrap_err().contains("`m.lora_down.weight` has rank 2, the export's rank is 4"));
    }

    #[test]
    fn prefixes_follow_the_layout_and_the_number_of_encoders() {
        assert_eq!(prefix(LoraFormat::Kohya, Part::TextEncoder, false), Some("lora_te_"));
        assert_eq!(prefix(LoraFormat::Kohya, Part::TextEncoder, true), Some("lora_te1_"));
        assert_eq!(prefix(LoraFormat::Diffusers, Part::TextEncoder2, true), Some("text_encoder_2."));
        assert_eq!(prefix(LoraFormat::Diffusers, Part::Vae, false), None);
    }

    #[test]
    fn prefixed_variables_split_off_under_their_own_names() {
        let vars = [var("text_encoder.a.lora_up.weight", &[1]), var("b.lora_up.weight", &[1]), var("text_encoder_2.c", &[1])];
        let (text, rest) = split_prefixed(&vars, "text_encoder.");
        assert_eq!(text.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["a.lora_up.weight"]);
        assert_eq!(rest.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["b.lora_up.weight", "text_encoder_2.c"]);
    }

    #[test]
    fn callers_metadata_adds_but_does_not_replace() {
        let ours = HashMap::from([("ss_network_dim".to_string(), "4".to_string())]);
        let added = with_callers(ours.clone(), &[("ss_base_model_version".into(), "sd_v1".into())]).unwrap();
        assert_eq!(added.len(), 2);
        assert!(with_callers(ours, &[("ss_network_dim".into(), "8".into())]).unwrap_err().contains("ss_network_dim"));
    }
}
