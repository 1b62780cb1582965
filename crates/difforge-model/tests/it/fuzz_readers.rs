//! A fuzz run over the readers of files users are handed: diffusers `config.json` files and
//! scheduler configs, safetensors headers, LoRA files (both layouts, with their adapter
//! metadata) and caption files. Each reader gets the committed fixtures mutated by a seeded
//! generator, a fixed number of cases (the same inputs on every run, so a failure reproduces);
//! it must answer Ok or an error, never panic. `DIFFORGE_FUZZ_CASES` raises the budget.

use difforge_core::StreamRng;
use difforge_data::source::metadata::{folder_captions, CaptionSource};
use difforge_model::stable_diffusion::scheduler::SchedulerConfig;
use difforge_model::stable_diffusion::{LoraFormat, StableDiffusion};
use difforge_nn::sd::autoencoder_kl::AutoencoderKlConfig;
use difforge_nn::sd::lazy_tensor::LazyTensor;
use difforge_nn::sd::load::read_config;
use difforge_nn::sd::unet_config::UNet2DConditionConfig;
use difforge_nn::sd::ClipTextConfig;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use tch::Device;

/// Cases per reader unless DIFFORGE_FUZZ_CASES says.
const CASES: usize = 1000;

fn cases() -> usize {
    std::env::var("DIFFORGE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(CASES)
}

fn sd15() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../difforge-nn/tests/fixtures/sd/tiny-sd15")
}

fn lora_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd-lora").join(name)
}

/// Values that break readers: zero, negatives, huge numbers, wrong types.
fn hostile_value(rng: &mut StreamRng) -> Value {
    let choices = [
        Value::from(0),
        Value::from(-1),
        Value::from(1_000_000_000_000i64),
        Value::from(i64::MAX),
        Value::from(u64::MAX),
        Value::from(1e300),
        Value::from(-1e300),
        Value::from(0.5),
        Value::from(2.0),
        Value::from(""),
        Value::from("x"),
        Value::Null,
        Value::Bool(true),
        Value::Array(Vec::new()),
        Value::Array(vec![Value::from(0); 3]),
        Value::Object(Default::default()),
    ];
    choices[rng.random_range(0..choices.len())].clone()
}

/// `value` with one to three of its leaves (or whole members) replaced by hostile values.
fn mutate_json(value: &Value, rng: &mut StreamRng) -> Value {
    let mut out = value.clone();
    for _ in 0..rng.random_range(1..=3) {
        replace_somewhere(&mut out, rng);
    }
    out
}

fn replace_somewhere(value: &mut Value, rng: &mut StreamRng) {
    match value {
        Value::Object(map) if !map.is_empty() && rng.random_range(0..4) > 0 => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let key = &keys[rng.random_range(0..keys.len())];
            if let Some(child) = map.get_mut(key) {
                replace_somewhere(child, rng);
            }
        }
        Value::Array(items) if !items.is_empty() && rng.random_range(0..4) > 0 => {
            let i = rng.random_range(0..items.len());
            replace_somewhere(&mut items[i], rng);
        }
        _ => *value = hostile_value(rng),
    }
}

/// `bytes` with one to four byte-level changes: flips, interesting bytes, cuts, copies.
fn mutate_bytes(bytes: &[u8], rng: &mut StreamRng) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        if out.is_empty() {
            out.push(b'{');
            continue;
        }
        let at = rng.random_range(0..out.len());
        match rng.random_range(0..6) {
            0 => out[at] ^= 1 << rng.random_range(0..8),
            1 => out[at] = [0u8, 0xff, b'"', b'{', b'9', b'-', b'e', 0x80][rng.random_range(0..8)],
            2 => out.truncate(at),
            3 => {
                let end = (at + rng.random_range(1..64)).min(out.len());
                out.drain(at..end);
            }
            4 => {
                let end = (at + rng.random_range(1..64)).min(out.len());
                let copy = out[at..end].to_vec();
                out.splice(at..at, copy);
            }
            _ => out.insert(at, rng.random()),
        }
    }
    out
}

/// A safetensors file with its JSON header mutated (the length prefix made to fit), or its
/// bytes mutated anywhere.
fn mutate_safetensors(bytes: &[u8], rng: &mut StreamRng) -> Vec<u8> {
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).expect("a fixture header");
    if rng.random_range(0..2) == 0 {
        return mutate_bytes(bytes, rng);
    }
    let text = serde_json::to_vec(&mutate_json(&header, rng)).expect("JSON");
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(&bytes[8 + header_len..]);
    out
}

/// Runs `read` on each of `cases()` inputs made by `make`, counting answers; a panic fails the
/// test with the case number (the generator is seeded, so it reproduces).
fn fuzz(name: &str, seed: u64, mut make: impl FnMut(&mut StreamRng) -> Vec<u8>, mut read: impl FnMut(&[u8]) -> bool) {
    let mut rng = StreamRng::seed_from_u64(seed);
    let (mut ok, mut refused) = (0, 0);
    for case in 0..cases() {
        let input = make(&mut rng);
        match catch_unwind(AssertUnwindSafe(|| read(&input))) {
            Ok(true) => ok += 1,
            Ok(false) => refused += 1,
            Err(_) => panic!("{name}: case {case} (seed {seed}) panicked on {} bytes: {:?}", input.len(), String::from_utf8_lossy(&input)),
        }
    }
    eprintln!("fuzz {name}: {} cases, {ok} read, {refused} refused, no panic", ok + refused);
}

/// A config.json's mutations, read into `T` and checked as building the network would check it.
fn fuzz_config(name: &str, seed: u64, component: &str, check: impl Fn(&Path) -> bool) {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read(sd15().join(component).join("config.json")).unwrap();
    let json: Value = serde_json::from_slice(&original).unwrap();
    let make = |rng: &mut StreamRng| {
        if rng.random_range(0..3) == 0 {
            mutate_bytes(&original, rng)
        } else {
            serde_json::to_vec(&mutate_json(&json, rng)).unwrap()
        }
    };
    let path = dir.path().join("config.json");
    fuzz(name, seed, make, |input| {
        std::fs::write(&path, input).unwrap();
        check(dir.path())
    });
}

#[test]
fn diffusers_configs_never_panic() {
    fuzz_config("unet config.json", 1, "unet", |dir| read_config::<UNet2DConditionConfig>(dir).is_ok_and(|c| c.levels().is_ok() && c.text_time().is_ok()));
    fuzz_config("vae config.json", 2, "vae", |dir| read_config::<AutoencoderKlConfig>(dir).is_ok_and(|c| c.validate().is_ok()));
    fuzz_config("text_encoder config.json", 3, "text_encoder", |dir| read_config::<ClipTextConfig>(dir).is_ok_and(|c| c.validate().is_ok()));

    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read(sd15().join("scheduler/scheduler_config.json")).unwrap();
    let json: Value = serde_json::from_slice(&original).unwrap();
    let path = dir.path().join("scheduler_config.json");
    fuzz(
        "scheduler_config.json",
        4,
        |rng| serde_json::to_vec(&mutate_json(&json, rng)).unwrap(),
        |input| {
            std::fs::write(&path, input).unwrap();
            SchedulerConfig::read(dir.path()).is_ok_and(|c| c.scheduling(&path).is_ok())
        },
    );
}

#[test]
fn safetensors_headers_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read(sd15().join("vae/diffusion_pytorch_model.safetensors")).unwrap();
    let path = dir.path().join("weights.safetensors");
    fuzz(
        "safetensors",
        5,
        |rng| mutate_safetensors(&original, rng),
        |input| {
            std::fs::write(&path, input).unwrap();
            LazyTensor::read_safetensors(&path).is_ok_and(|tensors| tensors.iter().all(|(_, t)| t.materialise().is_ok()))
        },
    );
}

#[test]
fn lora_files_never_panic() {
    let mut sd = StableDiffusion::load(&sd15(), Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (path, out) = (dir.path().join("lora.safetensors"), dir.path().join("converted.safetensors"));
    for (i, fixture) in ["kohya.safetensors", "peft.safetensors"].into_iter().enumerate() {
        let original = std::fs::read(lora_fixture(fixture)).unwrap();
        fuzz(
            fixture,
            6 + i as u64,
            |rng| mutate_safetensors(&original, rng),
            |input| {
                std::fs::write(&path, input).unwrap();
                let converted = sd.convert_lora(&path, LoraFormat::Kohya, &out).is_ok();
                sd.apply_lora(&path, 0.5).is_ok() && converted
            },
        );
    }
}

#[test]
fn caption_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let files: Vec<PathBuf> = ["a.png", "b.png", "sub/c.png"].iter().map(|f| root.join(f)).collect();
    std::fs::create_dir_all(root.join("sub")).unwrap();
    let jsonl = "{\"file_name\": \"a.png\", \"text\": \"a red square, small\"}\n{\"file_name\": \"sub/c.png\", \"text\": \"a \\\"blue\\\" circle\"}\n";
    let csv = "file_name,text\na.png,\"a red, small square\"\n\"sub/c.png\",\"two\nlines\"\n";
    let source = CaptionSource { extension: ".txt".into(), column: "text".into() };
    for (i, (name, original)) in [("metadata.jsonl", jsonl), ("metadata.csv", csv), ("b.txt", "a green triangle\n")].into_iter().enumerate() {
        let path = root.join(name);
        fuzz(
            name,
            8 + i as u64,
            |rng| mutate_bytes(original.as_bytes(), rng),
            |input| {
                std::fs::write(&path, input).unwrap();
                folder_captions(root, &files, &source).is_ok()
            },
        );
        std::fs::remove_file(&path).unwrap();
    }
}
