//! Metrics on feature sets: each takes real and generated features as `[N, D]` tensors.
//!
//! - [`frechet`]: Frechet distance between Gaussian fits (FID when the features are Inception's),
//!   with a cacheable [`Gaussian`].
//! - [`kid`]: Kernel Inception Distance, torch-fidelity's definition.
//! - [`manifold`]: k-NN precision, recall and F1 (Kynkaanniemi et al. 2019), density and coverage
//!   (Naeem et al. 2020), prdc's definitions.
//!
//! Inputs may be any floating-point kind; every metric computes in f64 on the device of the real
//! features, because the quantities involved are differences of large sums (KID) or traces of
//! matrix square roots (FD) that lose several digits in f32.
//! `tests/metrics_parity.rs` checks all of them against the Python reference packages.

pub mod frechet;
pub mod kid;
pub mod manifold;

pub use frechet::{frechet_distance, Gaussian};
pub use kid::{kid, mmd2_unbiased, Kid, KidConfig, PolyKernel};
pub use manifold::{manifold, Manifold, DEFAULT_NEAREST_K};

use crate::EvalError;
use tch::{Device, Kind, TchError, Tensor};

/// Wraps a libtorch failure with what was being computed. Inputs are validated before any tensor
/// work, so these are rare (out of memory, a device that cannot run f64 linear algebra); they are
/// reported as input errors because the inputs are what would have to change.
pub(crate) fn torch_err(context: &'static str) -> impl FnOnce(TchError) -> EvalError {
    move |e| EvalError::Input(format!("{context}: {e}"))
}

/// Whether every value of `t` is finite (`context` names the check in a libtorch error).
pub(crate) fn all_finite(t: &Tensor, context: &'static str) -> Result<bool, EvalError> {
    let finite =
        t.f_isfinite().and_then(|f| f.f_all()).and_then(|f| f.f_to_kind(Kind::Int64)).and_then(|f| f.f_int64_value(&[])).map_err(torch_err(context))?;
    Ok(finite != 0)
}

/// A validated feature set: `[rows, cols]`, f64, on `device`.
pub(crate) struct Features {
    pub(crate) x: Tensor,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
}

/// Checks that `t` is a 2-D floating-point feature set with finite values and converts it to f64
/// on `device`. `name` says which set in error messages ("real", "fake", ...).
pub(crate) fn features_f64(name: &str, t: &Tensor, device: Device) -> Result<Features, EvalError> {
    let size = t.size();
    let (rows, cols) = match size.as_slice() {
        &[r, c] => (r, c),
        other => return Err(EvalError::Input(format!("{name} features must be a 2-D [N, D] tensor, got shape {other:?}"))),
    };
    if cols == 0 {
        return Err(EvalError::Input(format!("{name} features have no columns (shape [{rows}, 0])")));
    }
    let kind = t.f_kind().map_err(torch_err("reading the feature kind"))?;
    if !matches!(kind, Kind::Half | Kind::BFloat16 | Kind::Float | Kind::Double) {
        return Err(EvalError::Input(format!("{name} features must be floating point, got {kind:?}")));
    }
    let x = t.f_to_device(device).and_then(|x| x.f_to_kind(Kind::Double)).and_then(|x| x.f_contiguous()).map_err(torch_err("converting features to f64"))?;
    if !all_finite(&x, "checking features for NaN/inf")? {
        return Err(EvalError::Input(format!("{name} features contain NaN or infinite values")));
    }
    // Shapes from libtorch are never negative.
    Ok(Features { x, rows: rows as usize, cols: cols as usize })
}

/// Errors unless two feature sets have the same width.
pub(crate) fn same_width(a_name: &str, a: &Features, b_name: &str, b: &Features) -> Result<(), EvalError> {
    if a.cols != b.cols {
        return Err(EvalError::Input(format!("{a_name} features have {} dimensions but {b_name} features have {}", a.cols, b.cols)));
    }
    Ok(())
}

/// Rows per chunk so that a `[rows, width]` f64 block stays near 64 MiB: N x N distance or kernel
/// matrices for tens of thousands of samples would not fit in memory at once.
pub(crate) fn chunk_rows(width: usize) -> usize {
    const BLOCK_ELEMENTS: usize = 8 << 20;
    (BLOCK_ELEMENTS / width.max(1)).max(1)
}

/// Reads a 0-d (or one-element) tensor as f64.
pub(crate) fn scalar(t: &Tensor, context: &'static str) -> Result<f64, EvalError> {
    t.f_double_value(&[]).map_err(torch_err(context))
}
