//! The Stable Diffusion VAE (`AutoencoderKL`) against diffusers 0.35.2 on the tiny SD 1.5
//! fixture: encode, decode, sliced and tiled decode; and what it refuses.

use crate::sd_reference::{assert_close, fixture, References};
use difforge_nn::sd::autoencoder_kl::{AutoencoderKl, AutoencoderKlConfig, DiagonalGaussian};
use difforge_nn::sd::load::read_config;
use tch::{nn::VarStore, Device, Kind, Tensor};

fn vae() -> AutoencoderKl {
    AutoencoderKl::load(&fixture("tiny-sd15").join("vae"), Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn autoencoder_kl_matches_diffusers() {
    let refs = References::of("tiny-sd15");
    let vae = vae();
    assert_eq!(vae.downscale(), 2);
    tch::no_grad(|| {
        let dist = vae.encode(refs.get("vae.image")).unwrap();
        assert_close("vae.mean", &dist.mean, refs.get("vae.mean"));
        assert_close("vae.logvar", &dist.logvar, refs.get("vae.logvar"));

        let latents = refs.get("vae.latents");
        let decoded = vae.decode(latents).unwrap();
        assert_close("vae.decoded", &decoded, refs.get("vae.decoded"));
        let sliced = vae.decode_sliced(latents).unwrap();
        assert!(max_abs_diff(&sliced, &decoded) <= 1e-5, "sliced decode: {}", max_abs_diff(&sliced, &decoded));

        // diffusers' enable_tiling() defaults: tiles of sample_size (32) pixels, overlap 0.25.
        let tiled = vae.decode_tiled(refs.get("vae.tiled_latents"), 32, 0.25).unwrap();
        assert_close("vae.tiled_decoded", &tiled, refs.get("vae.tiled_decoded"));
        // Latents within one tile decode as a whole.
        assert!(max_abs_diff(&vae.decode_tiled(latents, 32, 0.25).unwrap(), &decoded) <= 1e-5);
    });
}

#[test]
fn gaussian_samples_and_latent_scaling() {
    let moments = Tensor::cat(&[Tensor::full([1, 2, 1, 1], 0.5, (Kind::Float, Device::Cpu)), Tensor::from_slice(&[2.0_f32, 50.0]).view([1, 2, 1, 1])], 1);
    let dist = DiagonalGaussian::from_moments(&moments).unwrap();
    assert_eq!(Vec::<f32>::try_from(dist.logvar.flatten(0, -1)).unwrap(), [2.0, 20.0], "clamped to [-30, 20]");
    let noise = Tensor::from_slice(&[1.0_f32, -1.0]).view([1, 2, 1, 1]);
    let sample = Vec::<f32>::try_from(dist.sample(&noise).unwrap().flatten(0, -1)).unwrap();
    let expected = [0.5 + 1.0_f32.exp(), 0.5 - 10.0_f32.exp()];
    assert!(sample.iter().zip(expected).all(|(s, e)| (s - e).abs() <= 1e-6 * e.abs().max(1.0)), "{sample:?}");
    assert_eq!(Vec::<f32>::try_from(dist.mode().flatten(0, -1)).unwrap(), [0.5, 0.5]);
    assert!(dist.sample(&Tensor::zeros([1, 2, 2, 1], (Kind::Float, Device::Cpu))).is_err());
    assert!(DiagonalGaussian::from_moments(&Tensor::zeros([1, 3, 1, 1], (Kind::Float, Device::Cpu))).is_err());

    let config = AutoencoderKlConfig { shift_factor: Some(0.1159), scaling_factor: 0.3611, ..read_config(&fixture("tiny-sd15").join("vae")).unwrap() };
    let vae = AutoencoderKl::new(&VarStore::new(Device::Cpu).root(), &config).unwrap();
    let z = Tensor::from_slice(&[1.0_f32, -2.0]);
    let latents = vae.to_latents(&z);
    assert!(max_abs_diff(&latents, &((&z - 0.1159) * 0.3611)) <= 1e-7);
    assert!(max_abs_diff(&vae.from_latents(&latents), &z) <= 1e-6);
}

#[test]
fn optional_parts_follow_the_config() {
    let config = AutoencoderKlConfig { use_quant_conv: false, use_post_quant_conv: false, mid_block_add_attention: false, ..Default::default() };
    let vs = VarStore::new(Device::Cpu);
    let vae = AutoencoderKl::new(&vs.root(), &config).unwrap();
    let names = vs.variables();
    assert!(names.contains_key("encoder.mid_block.resnets.1.conv2.weight") && names.contains_key("decoder.up_blocks.0.resnets.1.norm1.bias"));
    assert!(!names.keys().any(|k| k.contains("quant_conv") || k.contains("attentions")), "{:?}", names.keys());
    let out = tch::no_grad(|| vae.decode(&Tensor::zeros([1, 4, 3, 5], (Kind::Float, Device::Cpu)))).unwrap();
    assert_eq!(out.size(), [1, 3, 3, 5], "one level: no upsampling");
}

#[test]
fn unsupported_configs_and_bad_inputs_are_refused() {
    let src = fixture("tiny-sd15").join("vae");
    let text = std::fs::read_to_string(src.join("config.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (from, to, words) in [
        ("\"silu\"", "\"gelu\"", ["act_fn", "`gelu`"]),
        (
            "\"DownEncoderBlock2D\",\n    \"DownEncoderBlock2D\"",
            "\"DownEncoderBlock2D\",\n    \"AttnDownEncoderBlock2D\"",
            ["down_block_types", "AttnDownEncoderBlock2D"],
        ),
        ("\"norm_num_groups\": 2", "\"norm_num_groups\": 3", ["block_out_channels", "norm_num_groups (3)"]),
    ] {
        assert!(text.contains(from), "{from}");
        std::fs::write(dir.path().join("config.json"), text.replace(from, to)).unwrap();
        let e = AutoencoderKl::load(dir.path(), Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("config.json") && words.iter().all(|w| e.contains(w)), "{e}");
    }

    let vae = vae();
    let f = |shape: &[i64]| Tensor::zeros(shape, (Kind::Float, Device::Cpu));
    for (images, why) in [(f(&[1, 3, 31, 32]), "multiples of 2"), (f(&[1, 4, 32, 32]), "(B, 3, H, W)"), (f(&[3, 32, 32]), "(B, 3, H, W)")] {
        let e = vae.encode(&images).unwrap_err().to_string();
        assert!(e.contains(why), "{e}");
    }
    let e = vae.decode(&Tensor::zeros([1, 4, 8, 8], (Kind::Double, Device::Cpu))).unwrap_err().to_string();
    assert!(e.contains("Double"), "{e}");
    assert!(vae.decode_sliced(&f(&[1, 3, 8, 8])).is_err());
    for (tile, overlap) in [(32, 1.0), (32, -0.1), (32, f64::NAN), (1, 0.25), (30, 0.25), (i64::MAX, -1.0)] {
        assert!(vae.decode_tiled(&f(&[1, 4, 8, 8]), tile, overlap).is_err(), "tile {tile}, overlap {overlap}");
    }
}
