//! LoRA adapters as training holds them (rank 4, alpha 8, deterministic values) on every
//! attention projection of the tiny SD 1.5 UNet, one 3x3 conv (LoCon) and two text-encoder
//! projections, exported in kohya's and diffusers' layouts and read back by difforge's own LoRA
//! loader: each file must give exactly base + alpha / rank * up @ down. With
//! DIFFORGE_LORA_EXPORT_DIR set, the files and difforge's UNet output go there for
//! tools/check_sd_lora_export.py, which loads them with diffusers' `load_lora_weights`.

use difforge_model::stable_diffusion::components::Part;
use difforge_model::stable_diffusion::{lora_export, lora_file, LoraExport, LoraFormat, NetworkAdapters, StableDiffusion};
use std::collections::HashMap;
use std::path::PathBuf;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

const RANK: i64 = 4;
const ALPHA: f64 = 8.0;
const TEXT_MODULES: [&str; 2] = ["text_model.encoder.layers.0.self_attn.q_proj", "text_model.encoder.layers.1.self_attn.out_proj"];
const CONV: &str = "down_blocks.0.resnets.0.conv1";

fn sd15() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../difforge-nn/tests/fixtures/sd/tiny-sd15")
}

fn weights(part: &str) -> HashMap<String, Tensor> {
    let file = if part == "unet" { "unet/diffusion_pytorch_model.safetensors" } else { "text_encoder/model.safetensors" };
    Tensor::read_safetensors(sd15().join(file)).unwrap().into_iter().collect()
}

/// The UNet's attention projections (attn1 and attn2: to_q, to_k, to_v, to_out.0) and one conv.
fn unet_modules(base: &HashMap<String, Tensor>) -> Vec<String> {
    let projections = ["to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight"];
    let mut modules: Vec<String> = base
        .keys()
        .filter(|k| (k.contains(".attn1.") || k.contains(".attn2.")) && projections.iter().any(|p| k.ends_with(p)))
        .map(|k| k.trim_end_matches(".weight").to_string())
        .collect();
    modules.push(CONV.to_string());
    modules.sort();
    modules
}

/// Deterministic values of `size` (a seeded sine, no global generator: tests run in parallel).
fn values(size: &[i64], seed: f64) -> Tensor {
    let n: i64 = size.iter().product();
    ((Tensor::arange(n, (Kind::Float, Device::Cpu)) * 0.731 + seed).sin() * 0.2).reshape(size)
}

/// Adapters named as training names them: down (rank, in[, kh, kw]), up (out, rank[, 1, 1]).
fn adapters(base: &HashMap<String, Tensor>, modules: &[impl AsRef<str>], seed: f64) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    for (i, module) in modules.iter().map(AsRef::as_ref).enumerate() {
        let w = base[&format!("{module}.weight")].size();
        let (down, up) = match w.as_slice() {
            [o, i, kh, kw] => (vec![RANK, *i, *kh, *kw], vec![*o, RANK, 1, 1]),
            [o, i] => (vec![RANK, *i], vec![*o, RANK]),
            _ => panic!("{module}: weight of shape {w:?}"),
        };
        let seed = seed + i as f64;
        out.push((format!("{module}.lora_down.weight"), values(&down, seed)));
        out.push((format!("{module}.lora_up.weight"), values(&up, seed + 0.5)));
    }
    out
}

/// base + alpha / rank * up @ down for every adapted module, by module path.
fn merged(base: &HashMap<String, Tensor>, adapters: &[(String, Tensor)]) -> HashMap<String, Tensor> {
    let named: HashMap<&str, &Tensor> = adapters.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = HashMap::new();
    for name in named.keys().filter_map(|n| n.strip_suffix(".lora_down.weight")) {
        let w = &base[&format!("{name}.weight")];
        let up = named[format!("{name}.lora_up.weight").as_str()].reshape([w.size()[0], RANK]);
        let down = named[format!("{name}.lora_down.weight").as_str()].reshape([RANK, -1]);
        let delta = up.matmul(&down).reshape(w.size()) * (ALPHA / RANK as f64);
        out.insert(format!("{name}.weight"), w + delta);
    }
    out
}

/// A variable store holding `weights` under their names (as difforge's networks name them).
fn var_store(weights: &HashMap<String, Tensor>) -> VarStore {
    let vs = VarStore::new(Device::Cpu);
    for (name, t) in weights {
        let (path, leaf) = name.rsplit_once('.').unwrap();
        let p = path.split('.').fold(vs.root(), |p, part| p / part);
        let _ = p.var_copy(leaf, t);
    }
    vs
}

/// Largest |a - b|.
fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn unet_output(sd: &StableDiffusion) -> Tensor {
    let refs: HashMap<String, Tensor> = Tensor::read_safetensors(sd15().join("reference.safetensors")).unwrap().into_iter().collect();
    tch::no_grad(|| sd.unet.forward(&refs["unet.sample"], &refs["unet.timesteps"], &refs["unet.encoder_hidden_states"], None).unwrap())
}

/// Where the files go: DIFFORGE_LORA_EXPORT_DIR (kept for the Python check) or a temporary
/// folder.
fn out_dir() -> (Option<tempfile::TempDir>, PathBuf) {
    match std::env::var_os("DIFFORGE_LORA_EXPORT_DIR") {
        Some(dir) => {
            std::fs::create_dir_all(&dir).unwrap();
            (None, PathBuf::from(dir))
        }
        None => {
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().to_path_buf();
            (Some(tmp), path)
        }
    }
}

fn settings() -> LoraExport {
    LoraExport { rank: RANK, alpha: ALPHA, metadata: vec![("ss_base_model_version".into(), "sd_v1".into())] }
}

#[test]
fn exported_kohya_and_diffusers_files_merge_to_base_plus_scaled_up_down() {
    let (unet_base, text_base) = (weights("unet"), weights("text_encoder"));
    let unet_adapters = adapters(&unet_base, &unet_modules(&unet_base), 1.0);
    let text_adapters = adapters(&text_base, &TEXT_MODULES, 100.0);
    let (unet_want, text_want) = (merged(&unet_base, &unet_adapters), merged(&text_base, &text_adapters));
    let networks = [NetworkAdapters { part: Part::Unet, variables: &unet_adapters }, NetworkAdapters { part: Part::TextEncoder, variables: &text_adapters }];
    let (_keep, dir) = out_dir();
    let base_output = unet_output(&StableDiffusion::load(&sd15(), Device::Cpu).unwrap());
    let mut outputs = Vec::new();
    for (stem, format) in [("kohya", LoraFormat::Kohya), ("diffusers", LoraFormat::Diffusers)] {
        let path = dir.join(format!("{stem}.safetensors"));
        assert_eq!(lora_export::export(&path, format, &networks, &settings()).unwrap(), 33 + 2, "{stem}");

        // Every adapted weight is base + alpha / rank * up @ down; every other one is unchanged.
        let stores = [var_store(&unet_base), var_store(&text_base)];
        let report = lora_file::apply(&path, 1.0, &[(Part::Unet, &stores[0]), (Part::TextEncoder, &stores[1])]).unwrap();
        assert_eq!(report.format, format, "{stem}");
        for (vs, (base, merged)) in stores.iter().zip([(&unet_base, &unet_want), (&text_base, &text_want)]) {
            for (name, var) in vs.variables() {
                let want = merged.get(&name).unwrap_or(&base[&name]);
                assert!(max_diff(&var, want) <= 1e-6, "{stem}: `{name}` differs from base + alpha / rank * up @ down by {}", max_diff(&var, want));
            }
        }

        let mut sd = StableDiffusion::load(&sd15(), Device::Cpu).unwrap();
        let report = sd.apply_lora(&path, 1.0).unwrap();
        let patched: Vec<(&str, usize)> = report.patched.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(patched, [("text_encoder", 2), ("unet", 33)], "{stem}");
        outputs.push(unet_output(&sd));
    }
    assert!(max_diff(&outputs[0], &outputs[1]) <= 1e-6, "the two layouts give one model");
    assert!(max_diff(&outputs[0], &base_output) > 1e-2, "the LoRA changes the UNet");
    Tensor::write_safetensors(&[("output", &outputs[0])], dir.join("difforge_unet_output.safetensors")).unwrap();
}

#[test]
fn headers_carry_the_rank_and_alpha_each_loader_reads() {
    let base = weights("unet");
    let unet_adapters = adapters(&base, &unet_modules(&base), 1.0);
    let networks = [NetworkAdapters { part: Part::Unet, variables: &unet_adapters }];
    let dir = tempfile::tempdir().unwrap();
    let (kohya, diffusers) = (dir.path().join("k.safetensors"), dir.path().join("d.safetensors"));
    lora_export::export(&kohya, LoraFormat::Kohya, &networks, &settings()).unwrap();
    lora_export::export(&diffusers, LoraFormat::Diffusers, &networks, &settings()).unwrap();

    let meta = difforge_nn::weights::read_metadata(&kohya).unwrap();
    for (key, value) in [("ss_network_module", "networks.lora"), ("ss_network_dim", "4"), ("ss_network_alpha", "8.0"), ("ss_base_model_version", "sd_v1")] {
        assert_eq!(meta.get(key).map(String::as_str), Some(value), "{key}");
    }
    assert!(meta["ss_network_args"].contains("conv_dim"), "a 3x3 conv adapter is LoCon");
    let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(&kohya).unwrap().into_iter().collect();
    let alpha = &tensors["lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0.alpha"];
    assert_eq!((alpha.size(), alpha.kind(), alpha.double_value(&[])), (vec![], Kind::Float, ALPHA));

    let meta = difforge_nn::weights::read_metadata(&diffusers).unwrap();
    assert_eq!(meta["format"], "pt");
    let config: serde_json::Value = serde_json::from_str(&meta["lora_adapter_metadata"]).unwrap();
    assert_eq!((config["unet.r"].as_i64(), config["unet.lora_alpha"].as_f64()), (Some(RANK), Some(ALPHA)));
    assert_eq!(config["unet.target_modules"].as_array().map(Vec::len), Some(33));
    assert!(config.get("text_encoder.r").is_none(), "only networks with adapters get a config");
}

const TO_Q: &str = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q";

/// The error of exporting adapters on to_q and the conv after `edit`; checks that no file is
/// left.
fn export_error(edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> String {
    let mut vars = adapters(&weights("unet"), &[TO_Q, CONV], 1.0);
    edit(&mut vars);
    let networks = [NetworkAdapters { part: Part::Unet, variables: &vars }];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lora.safetensors");
    let err = lora_export::export(&path, LoraFormat::Kohya, &networks, &settings()).unwrap_err().to_string();
    assert!(!path.exists(), "a failed export writes nothing");
    err
}

#[test]
fn adapters_that_do_not_pair_are_refused_by_name_and_nothing_is_written() {
    let zeros = |size: &[i64]| Tensor::zeros(size, (Kind::Float, Device::Cpu));
    let (down, up) = (format!("{TO_Q}.lora_down.weight"), format!("{TO_Q}.lora_up.weight"));
    let err = export_error(|vars| vars.retain(|(n, _)| *n != up));
    assert!(err.contains(&format!("`{down}` is a down weight without `{up}`")), "{err}");
    let err = export_error(|vars| vars.push((format!("{TO_Q}.lora_mid.weight"), zeros(&[4, 4]))));
    assert!(err.contains(&format!("`{TO_Q}.lora_mid.weight` is not a LoRA half")), "{err}");
    let err = export_error(|vars| vars[0].1 = zeros(&[RANK, 8, 3, 3]));
    assert!(err.contains("no LoRA pair") && err.contains("[4, 8, 3, 3]"), "{err}");
    let err = export_error(|vars| {
        vars.retain(|(n, _)| !n.starts_with(TO_Q));
        vars.push((down.clone(), zeros(&[2, 8])));
        vars.push((up.clone(), zeros(&[8, 2])));
    });
    assert!(err.contains(&format!("`{down}` has rank 2, the export's rank is 4")), "{err}");
}
