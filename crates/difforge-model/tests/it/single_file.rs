//! Single-file Stable Diffusion checkpoints on the tiny fixtures: tiny-sd15.safetensors,
//! tiny-sd15.ckpt and tiny-sdxl.safetensors, which tools/make_sd_fixtures.py writes from the
//! diffusers folders beside them and checks by loading them back with diffusers. Loading one
//! gives the folder's tensors and image; diffusers -> single file -> diffusers gives the same
//! tensors and files; a broken file fails naming the file and tensor; outputs are whole or absent.

use difforge_diffusion::{NoiseSource, StartNoise};
use difforge_model::stable_diffusion::components::{Networks, Part};
use difforge_model::stable_diffusion::single_file::read_checkpoint;
use difforge_model::stable_diffusion::{Family, StableDiffusion, TextToImage};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../difforge-nn/tests/fixtures/sd").join(name)
}

/// Every variable of every network, by part and name.
fn tensors_of(networks: &Networks) -> HashMap<(Part, String), Tensor> {
    networks.parts().into_iter().flat_map(|(part, vars)| vars.variables().into_iter().map(move |(name, t)| ((part, name), t))).collect()
}

fn assert_same_networks(a: &Networks, b: &Networks, what: &str) {
    let (a, b) = (tensors_of(a), tensors_of(b));
    assert_eq!(a.len(), b.len(), "{what}: variable counts");
    for (key, t) in &a {
        assert!(t.equal(&b[key]), "{what}: {key:?} differs");
    }
}

fn assert_same_tensors(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>, what: &str) {
    let mut missing: Vec<&String> = a.keys().filter(|k| !b.contains_key(*k)).chain(b.keys().filter(|k| !a.contains_key(*k))).collect();
    missing.sort();
    assert!(missing.is_empty(), "{what}: keys in one file only: {missing:?}");
    for (key, t) in a {
        assert!(t.kind() == b[key].kind() && t.equal(&b[key]), "{what}: `{key}` differs");
    }
}

fn safetensors(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

#[test]
fn single_files_load_the_tensors_of_their_diffusers_folders() {
    for (file, folder, family) in [
        ("tiny-sd15.safetensors", "tiny-sd15", Family::Sd1),
        ("tiny-sd15.ckpt", "tiny-sd15", Family::Sd1),
        ("tiny-sdxl.safetensors", "tiny-sdxl", Family::Sdxl),
    ] {
        let (found, networks) = Networks::load_single_file(&fixture(file), &fixture(folder), Device::Cpu).unwrap();
        assert_eq!(found, family, "{file}");
        let folder_networks = Networks::load_diffusers(&fixture(folder), Device::Cpu).unwrap();
        assert_same_networks(&networks, &folder_networks, file);
        assert_eq!(Family::of(&folder_networks), family, "{folder}");
    }
}

#[test]
fn a_single_file_generates_the_image_of_its_folder() {
    for (file, folder, negative) in [("tiny-sd15.safetensors", "tiny-sd15", Some("blurry, low quality")), ("tiny-sdxl.safetensors", "tiny-sdxl", None)] {
        let image = |sd: &StableDiffusion| {
            let noise = NoiseSource::new(vec![42], sd.latent_shape(32, 32), Device::Cpu).with_start(StartNoise::Torch);
            let (ids, _) = sd.tokenize("a photo of an astronaut riding a horse on mars, (masterpiece:1.2)", negative, 1).unwrap();
            let sampler = difforge_diffusion::SamplerConfig { steps: 4, guidance: 7.5, ..sd.scheduling.sampler.clone() };
            let req = TextToImage { ids: &ids, width: 32, height: 32, sampler: &sampler, noise: &noise, clip_skip: 0 };
            tch::no_grad(|| sd.generate(&req, None)).unwrap()
        };
        let single = StableDiffusion::load_single_file(&fixture(file), &fixture(folder), Device::Cpu).unwrap();
        let from_folder = StableDiffusion::load(&fixture(folder), Device::Cpu).unwrap();
        let got = image(&single);
        assert!(got.equal(&image(&from_folder)), "{file}: the image differs from the folder's");
        // And so diffusers' image, as the pipeline test measures it.
        let refs: HashMap<String, Tensor> = safetensors(&fixture(folder).join("reference.safetensors"));
        let got = (got / 2.0 + 0.5).clamp(0.0, 1.0).to_kind(Kind::Double);
        let want = refs["pipeline.image"].to_kind(Kind::Double);
        let err = (&got - &want).abs().max().double_value(&[]) / want.abs().max().double_value(&[]);
        assert!(err < 1e-5, "{file}: relative error {err:e} against diffusers' image");
    }
}

#[test]
fn diffusers_to_single_file_writes_what_diffusers_reads_and_converts_back() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["tiny-sd15", "tiny-sdxl"] {
        let folder = Networks::load_diffusers(&fixture(name), Device::Cpu).unwrap();
        let family = Family::of(&folder);
        let single = dir.path().join(format!("{name}.safetensors"));
        folder.write_single_file(family, &single, Kind::Float).unwrap();
        // The same keys and values as the fixture, whose reverse mapping is diffusers-checked.
        let want = safetensors(&fixture(&format!("{name}.safetensors")));
        assert_same_tensors(&safetensors(&single), &want, name);

        let back = dir.path().join(name);
        let (_, networks) = Networks::load_single_file(&single, &fixture(name), Device::Cpu).unwrap();
        networks.write_diffusers(&fixture(name), &back).unwrap();
        assert_same_networks(&Networks::load_diffusers(&back, Device::Cpu).unwrap(), &folder, name);
        for part in folder.parts().iter().map(|(p, _)| p.folder()).chain(["scheduler", "tokenizer"]) {
            for entry in std::fs::read_dir(fixture(name).join(part)).unwrap() {
                let file = entry.unwrap().file_name();
                if !file.to_string_lossy().ends_with(".safetensors") {
                    let (a, b) = (fixture(name).join(part).join(&file), back.join(part).join(&file));
                    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "{}", b.display());
                }
            }
        }
        let again = dir.path().join(format!("{name}-again.safetensors"));
        Networks::load_diffusers(&back, Device::Cpu).unwrap().write_single_file(family, &again, Kind::Float).unwrap();
        assert_same_tensors(&safetensors(&again), &want, "single -> diffusers -> single");
    }
}

#[test]
fn half_precision_single_files_hold_float16() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("half.safetensors");
    let networks = Networks::load_diffusers(&fixture("tiny-sd15"), Device::Cpu).unwrap();
    networks.write_single_file(Family::Sd1, &out, Kind::Half).unwrap();
    let half = safetensors(&out);
    let full = safetensors(&fixture("tiny-sd15.safetensors"));
    for (key, t) in &half {
        assert_eq!(t.kind(), Kind::Half, "{key}");
        assert!(t.equal(&full[key].to_kind(Kind::Half)), "{key}");
    }
    let (_, loaded) = Networks::load_single_file(&out, &fixture("tiny-sd15"), Device::Cpu).unwrap();
    let w = loaded.unet.vars.variables()["conv_in.weight"].shallow_clone();
    assert_eq!(w.kind(), Kind::Float, "half files load into float32 networks");
}

/// SD 2.x's OpenCLIP text encoder, from the SD 1.x folder with a GELU text encoder (what tells
/// the generations apart in a diffusers folder): fused q/k/v under `cond_stage_model.model.`,
/// and the tensors diffusers drops (the last layer, the projection, logit_scale) skipped.
#[test]
fn sd2_files_use_openclip_names_and_skip_the_layer_diffusers_drops() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("tiny-sd2");
    copy_dir(&fixture("tiny-sd15"), &folder);
    let config = folder.join("text_encoder/config.json");
    let text = std::fs::read_to_string(&config).unwrap().replace("\"quick_gelu\"", "\"gelu\"");
    std::fs::write(&config, text).unwrap();
    let networks = Networks::load_diffusers(&folder, Device::Cpu).unwrap();
    assert_eq!(Family::of(&networks), Family::Sd2);
    let single = dir.path().join("sd2.safetensors");
    networks.write_single_file(Family::Sd2, &single, Kind::Float).unwrap();
    let mut tensors = safetensors(&single);
    let te = networks.text_encoders[0].vars.variables();
    let fused = &tensors["cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight"];
    let parts = ["q_proj", "k_proj", "v_proj"].map(|p| te[&format!("text_model.encoder.layers.1.self_attn.{p}.weight")].shallow_clone());
    assert!(fused.equal(&Tensor::cat(&parts, 0)), "q, k and v stacked in that order");
    assert!(tensors.keys().all(|k| !k.starts_with("cond_stage_model.transformer.")));

    // What an original SD 2.x file has besides: a 4th layer (the config has 3), the projection, logit_scale.
    let extra: Vec<String> = tensors.keys().filter(|k| k.contains("resblocks.2.")).cloned().collect();
    for key in extra {
        tensors.insert(key.replace("resblocks.2.", "resblocks.3."), tensors[&key].shallow_clone());
    }
    tensors.insert("cond_stage_model.model.text_projection".into(), Tensor::ones([32, 32], (Kind::Float, Device::Cpu)));
    tensors.insert("cond_stage_model.model.logit_scale".into(), Tensor::from(4.6f32));
    let full = dir.path().join("sd2-full.safetensors");
    let named: Vec<(String, Tensor)> = tensors.into_iter().collect();
    Tensor::write_safetensors(&named, &full).unwrap();
    let (family, loaded) = Networks::load_single_file(&full, &folder, Device::Cpu).unwrap();
    assert_eq!(family, Family::Sd2);
    assert_same_networks(&loaded, &networks, "SD 2.x");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// The fixture's tensors changed by `edit`, written to `dir/broken.safetensors`.
fn broken(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> PathBuf {
    let mut tensors = read_checkpoint(&fixture("tiny-sd15.safetensors")).unwrap();
    edit(&mut tensors);
    let path = dir.join("broken.safetensors");
    let named: Vec<(String, Tensor)> = tensors.into_iter().collect();
    Tensor::write_safetensors(&named, &path).unwrap();
    path
}

/// Loading the fixture changed by `edit` fails with an error naming the file and holding `wants`.
fn fails_with(edit: impl FnOnce(&mut HashMap<String, Tensor>), wants: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = broken(dir.path(), edit);
    let err = Networks::load_single_file(&path, &fixture("tiny-sd15"), Device::Cpu).err().expect("a broken file fails").to_string();
    assert!(err.contains(&path.display().to_string()), "names the file: {err}");
    for want in wants {
        assert!(err.contains(want), "{want:?} in: {err}");
    }
}

#[test]
fn broken_files_fail_naming_the_file_and_tensor() {
    let norm = "model.diffusion_model.input_blocks.1.0.in_layers.0.weight";
    fails_with(
        |t| {
            t.remove(norm);
        },
        &["missing", &format!("`{norm}`")],
    );
    let attn = "first_stage_model.encoder.mid.attn_1.q.weight";
    let wrong = Tensor::zeros([8, 4, 1, 1], (Kind::Float, Device::Cpu));
    fails_with(
        |t| {
            t.insert(attn.into(), wrong);
        },
        &[&format!("`{attn}` has shape [8, 4, 1, 1]"), "expects [8, 8, 1, 1]", "vae `encoder.mid_block.attentions.0.to_q.weight`"],
    );
    let extra = "model.diffusion_model.extra.weight";
    fails_with(
        |t| {
            t.insert(extra.into(), Tensor::zeros([1], (Kind::Float, Device::Cpu)));
        },
        &["have no place in the SD 1.x model", &format!("`{extra}`")],
    );
    fails_with(|t| t.retain(|k, _| k.starts_with("model.")), &["not a Stable Diffusion checkpoint"]);
    let err = Networks::load_single_file(&fixture("tiny-sdxl.safetensors"), &fixture("tiny-sd15"), Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("holds SDXL weights") && err.contains("is an SD 1.x/2.x model"), "{err}");
}

#[test]
fn writing_never_replaces_an_existing_output_nor_leaves_a_partial_one() {
    let dir = tempfile::tempdir().unwrap();
    let networks = Networks::load_diffusers(&fixture("tiny-sd15"), Device::Cpu).unwrap();
    let out = dir.path().join("there.safetensors");
    std::fs::write(&out, b"keep me").unwrap();
    let err = networks.write_single_file(Family::Sd1, &out, Kind::Float).unwrap_err().to_string();
    assert!(err.contains("--out") && err.contains("does not exist"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    let folder = dir.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    assert!(networks.write_diffusers(&fixture("tiny-sd15"), &folder).is_err());
    // A config folder without a scheduler fails midway: no output, no temporary left behind.
    let incomplete = dir.path().join("incomplete");
    copy_dir(&fixture("tiny-sd15"), &incomplete);
    std::fs::remove_dir_all(incomplete.join("scheduler")).unwrap();
    let out = dir.path().join("out");
    let err = networks.write_diffusers(&incomplete, &out).unwrap_err().to_string();
    assert!(err.contains("scheduler"), "{err}");
    let left: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left.len(), 3, "only what the test made: {left:?}");
}
