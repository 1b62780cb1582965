//! The PyTorch file reader gives back exactly what torch.save wrote, in both file layouts
//! (fixtures from tools/make_pickle_fixtures.py).
#![allow(clippy::unwrap_used)]

use difforge_nn::torch_pickle;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn check_file(name: &str) {
    let expected: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture("small_pth.json")).unwrap()).unwrap();
    let expected = expected["tensors"].as_object().unwrap();
    let tensors = torch_pickle::load(&fixture(name)).unwrap();
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    let mut want: Vec<&str> = expected.keys().map(String::as_str).collect();
    let mut got = names.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want, "{name}: tensor names");
    for (key, tensor) in &tensors {
        let e = &expected[key];
        let shape: Vec<i64> = e["shape"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        assert_eq!(tensor.size(), shape, "{name}: shape of {key}");
        let values: Vec<f64> = e["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let got = Vec::<f64>::try_from(tensor.to_kind(tch::Kind::Double).flatten(0, -1)).unwrap();
        assert_eq!(got, values, "{name}: values of {key}");
    }
    let half = &tensors.iter().find(|(n, _)| n == "half").unwrap().1;
    assert_eq!(half.kind(), tch::Kind::Half);
    let count = &tensors.iter().find(|(n, _)| n == "bn.num_batches_tracked").unwrap().1;
    assert_eq!(count.kind(), tch::Kind::Int64);
}

#[test]
fn legacy_files_read_back_exactly() {
    check_file("small_legacy.pth");
}

#[test]
fn zip_files_read_back_exactly() {
    check_file("small_zip.pth");
}

#[test]
fn a_truncated_file_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["small_legacy.pth", "small_zip.pth"] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        let cut = dir.path().join(format!("cut-{name}"));
        std::fs::write(&cut, &bytes[..bytes.len() - 40]).unwrap();
        let err = torch_pickle::load(&cut).unwrap_err().to_string();
        assert!(err.contains(&format!("cut-{name}")), "{err}");
    }
}
