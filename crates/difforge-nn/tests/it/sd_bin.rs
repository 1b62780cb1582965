//! Component folders that hold torch.save `.bin` weights (as older diffusers and transformers
//! saved them) load to the same networks as the safetensors ones
//! (`tiny-sd15-bin/`, written by tools/make_sd_fixtures.py from `tiny-sd15/`).

use crate::sd_reference::{fixture, References};
use difforge_nn::sd::autoencoder_kl::AutoencoderKl;
use difforge_nn::sd::ClipTextModel;
use tch::Device;

#[test]
fn bin_weights_load_as_the_safetensors_ones() {
    let refs = References::of("tiny-sd15");
    let (bin, safe) = (fixture("tiny-sd15-bin"), fixture("tiny-sd15"));
    let latents = refs.get("vae.latents");
    let decode = |dir: &std::path::Path| tch::no_grad(|| AutoencoderKl::load(&dir.join("vae"), Device::Cpu).unwrap().decode(latents).unwrap());
    assert!(decode(&bin).equal(&decode(&safe)), "VAE from diffusion_pytorch_model.bin");
    let ids = refs.get("text.input_ids");
    let encode =
        |dir: &std::path::Path| tch::no_grad(|| ClipTextModel::load(&dir.join("text_encoder"), Device::Cpu).unwrap().forward(ids).unwrap().last_hidden_state);
    assert!(encode(&bin).equal(&encode(&safe)), "text encoder from pytorch_model.bin");
}

#[test]
fn a_folder_without_weights_names_the_files_it_looked_for() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("tiny-sd15").join("vae/config.json"), dir.path().join("config.json")).unwrap();
    let err = AutoencoderKl::load(dir.path(), Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("diffusion_pytorch_model.safetensors") && err.contains("diffusion_pytorch_model.bin"), "{err}");
}
