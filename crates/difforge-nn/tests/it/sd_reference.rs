//! The reference tensors of the Stable Diffusion fixtures (`tools/make_sd_fixtures.py`) and the
//! comparison every SD parity test makes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// |difforge - diffusers| <= TOLERANCE * max|diffusers|, elementwise, in float32. Issue 13 asks for 1e-4;
/// the same libtorch kernels on the same inputs land within 1e-6, and 1e-5 still catches
/// near misses such as GELU's tanh approximation in place of the exact one (5e-5 off).
pub const TOLERANCE: f64 = 1e-5;

/// The folder of one fixture: `tiny-sd15`, `tiny-sd21` or `tiny-sdxl`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd").join(name)
}

pub struct References(pub HashMap<String, Tensor>);

impl References {
    pub fn of(name: &str) -> References {
        let path = fixture(name).join("reference.safetensors");
        References(Tensor::read_safetensors(&path).unwrap().into_iter().collect())
    }

    pub fn get(&self, key: &str) -> &Tensor {
        self.0.get(key).unwrap_or_else(|| panic!("reference `{key}` is not in the fixture"))
    }
}

/// Asserts that `actual` has the reference's shape and matches it to [`TOLERANCE`] relative to
/// the reference's largest magnitude; the message gives the worst difference.
pub fn assert_close(what: &str, actual: &Tensor, expected: &Tensor) {
    assert_eq!(actual.size(), expected.size(), "{what}: shape");
    let actual = actual.to_kind(Kind::Double);
    let expected = expected.to_kind(Kind::Double);
    let scale = expected.abs().max().double_value(&[]).max(1e-12);
    let worst = (actual - &expected).abs().max().double_value(&[]);
    assert!(worst <= TOLERANCE * scale, "{what}: worst difference {worst:e} against max |reference| {scale:e}");
}
