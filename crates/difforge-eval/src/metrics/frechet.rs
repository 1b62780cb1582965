//! Frechet distance between two Gaussians fitted to feature sets (FID when the features come from
//! Inception), and the Gaussian fit itself, which can be cached for a fixed reference set.
//!
//! Matches pytorch-fid's `calculate_frechet_distance` and torch-fidelity's
//! `fid_statistics_to_metric` (covariance with ddof = 1, as `numpy.cov(rowvar=False)`), but
//! takes the trace of the matrix square root differently: both references take `sqrtm(S1 S2)` (or
//! eigenvalues) of a non-symmetric product, which can produce complex parts and NaNs for nearly
//! singular covariances. Here tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2), the latter symmetric
//! positive semi-definite, so a symmetric eigensolver and clamping round-off negatives at zero
//! give a real answer always.

use super::{features_f64, scalar, torch_err, Features};
use crate::EvalError;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Mean and covariance of a feature set.
#[derive(Debug)]
pub struct Gaussian {
    /// f64 `[D]`.
    pub mean: Tensor,
    /// f64 `[D, D]`, normalised by `n - 1`.
    pub cov: Tensor,
    /// How many feature rows were fitted.
    pub n: usize,
}

const MEAN: &str = "mean";
const COV: &str = "cov";
const N: &str = "n";

impl Gaussian {
    /// Fits mean and covariance (ddof = 1) to `[N, D]` features, N >= 2.
    pub fn fit(features: &Tensor) -> Result<Gaussian, EvalError> {
        let f = features_f64("Gaussian-fit", features, features.device())?;
        if f.rows < 2 {
            return Err(EvalError::Input(format!("a Gaussian fit needs at least 2 feature rows for a covariance, got {}", f.rows)));
        }
        let (mean, cov) = mean_cov(&f).map_err(torch_err("fitting a Gaussian"))?;
        Ok(Gaussian { mean, cov, n: f.rows })
    }

    /// Feature width D.
    pub fn dim(&self) -> usize {
        self.mean.size().first().map_or(0, |&d| d as usize)
    }

    /// Named tensors (`mean`, `cov`, and `n` as a one-element i64) for caching, e.g. with
    /// `Tensor::write_safetensors`; [`Gaussian::from_tensors`] reads them back.
    pub fn to_tensors(&self) -> Vec<(String, Tensor)> {
        vec![(MEAN.to_string(), self.mean.shallow_clone()), (COV.to_string(), self.cov.shallow_clone()), (N.to_string(), Tensor::from_slice(&[self.n as i64]))]
    }

    /// Rebuilds a Gaussian from [`Gaussian::to_tensors`]' names, checking shapes and values
    /// (a cache file may be stale or hand-made).
    pub fn from_tensors(named: &[(String, Tensor)]) -> Result<Gaussian, EvalError> {
        let get = |name: &str| {
            named.iter().find(|(n, _)| n == name).map(|(_, t)| t).ok_or_else(|| EvalError::Input(format!("Gaussian statistics lack the tensor `{name}`")))
        };
        let mean = get(MEAN)?;
        let cov = get(COV)?;
        let n_t = get(N)?;
        if n_t.numel() != 1 {
            return Err(EvalError::Input(format!("Gaussian statistics: `n` must hold one value, got shape {:?}", n_t.size())));
        }
        let n =
            n_t.f_to_kind(Kind::Int64).and_then(|t| t.f_reshape([-1])).and_then(|t| t.f_int64_value(&[0])).map_err(torch_err("reading Gaussian statistics"))?;
        if n < 2 {
            return Err(EvalError::Input(format!("Gaussian statistics: `n` must be at least 2, got {n}")));
        }
        let g = Gaussian { mean: to_f64(mean, mean.device())?, cov: to_f64(cov, mean.device())?, n: n as usize };
        g.check("cached")?;
        Ok(g)
    }

    /// Writes the statistics as safetensors (see [`Gaussian::to_tensors`]).
    pub fn save(&self, path: &Path) -> Result<(), EvalError> {
        Tensor::write_safetensors(&self.to_tensors(), path).map_err(|e| EvalError::Write { path: path.to_path_buf(), reason: e.to_string() })
    }

    /// Reads statistics written by [`Gaussian::save`].
    pub fn load(path: &Path) -> Result<Gaussian, EvalError> {
        let named = Tensor::read_safetensors(path).map_err(|e| EvalError::Read { path: path.to_path_buf(), reason: e.to_string() })?;
        Gaussian::from_tensors(&named).map_err(|e| EvalError::Read { path: path.to_path_buf(), reason: e.to_string() })
    }

    /// The fields are public, so a Gaussian may be hand-made: check that mean is `[D]`, cov is
    /// `[D, D]` and both are finite before using them.
    fn check(&self, name: &str) -> Result<usize, EvalError> {
        let d = match self.mean.size().as_slice() {
            &[d] if d > 0 => d,
            other => return Err(EvalError::Input(format!("{name} Gaussian: mean must be a non-empty vector [D], got shape {other:?}"))),
        };
        if self.cov.size() != [d, d] {
            return Err(EvalError::Input(format!("{name} Gaussian: cov must be [{d}, {d}] to match the mean, got shape {:?}", self.cov.size())));
        }
        for (what, t) in [("mean", &self.mean), ("cov", &self.cov)] {
            if !super::all_finite(t, "checking Gaussian statistics")? {
                return Err(EvalError::Input(format!("{name} Gaussian: {what} contains NaN or infinite values")));
            }
        }
        Ok(d as usize)
    }
}

fn to_f64(t: &Tensor, device: Device) -> Result<Tensor, EvalError> {
    t.f_to_device(device).and_then(|t| t.f_to_kind(Kind::Double)).map_err(torch_err("converting Gaussian statistics to f64"))
}

/// Two passes over row chunks (mean, then centred cross-products): the centred form keeps the
/// covariance accurate when the mean is large against the spread, and chunking avoids a second
/// full-size f64 copy of a big feature set.
fn mean_cov(f: &Features) -> Result<(Tensor, Tensor), tch::TchError> {
    let rows = f.rows as i64;
    let chunk = super::chunk_rows(f.cols) as i64;
    let mean = f.x.f_mean_dim(0, false, Kind::Double)?;
    let mut cov = Tensor::f_zeros([f.cols as i64, f.cols as i64], (Kind::Double, f.x.device()))?;
    let mut start = 0;
    while start < rows {
        let len = chunk.min(rows - start);
        let xc = f.x.f_narrow(0, start, len)?.f_sub(&mean)?;
        cov = cov.f_add(&xc.f_tr()?.f_mm(&xc)?)?;
        start += len;
    }
    let cov = cov.f_div_scalar((rows - 1) as f64)?;
    // Exactly symmetric, so that eigh's use of one triangle loses nothing.
    let cov = cov.f_add(&cov.f_tr()?)?.f_mul_scalar(0.5)?;
    Ok((mean, cov))
}

/// |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2).
///
/// Not clamped at zero: for identical statistics round-off can leave a tiny negative value, as in
/// the Python references.
pub fn frechet_distance(a: &Gaussian, b: &Gaussian) -> Result<f64, EvalError> {
    let da = a.check("first")?;
    let db = b.check("second")?;
    if da != db {
        return Err(EvalError::Input(format!("Frechet distance between Gaussians of different widths: {da} and {db} dimensions")));
    }
    let device = a.mean.device();
    let (m1, s1) = (to_f64(&a.mean, device)?, to_f64(&a.cov, device)?);
    let (m2, s2) = (to_f64(&b.mean, device)?, to_f64(&b.cov, device)?);
    let parts = (|| -> Result<(Tensor, Tensor, Tensor, Tensor), tch::TchError> {
        let diff = m1.f_sub(&m2)?;
        let mean_term = diff.f_dot(&diff)?;
        let tr_sqrt = trace_sqrt_product(&s1, &s2)?;
        Ok((mean_term, s1.f_trace()?, s2.f_trace()?, tr_sqrt))
    })()
    .map_err(torch_err("computing the Frechet distance"))?;
    let mean_term = scalar(&parts.0, "reading the mean term")?;
    let tr1 = scalar(&parts.1, "reading a covariance trace")?;
    let tr2 = scalar(&parts.2, "reading a covariance trace")?;
    let tr_sqrt = scalar(&parts.3, "reading tr sqrt(S1 S2)")?;
    let fd = mean_term + tr1 + tr2 - 2.0 * tr_sqrt;
    if !fd.is_finite() {
        return Err(EvalError::Input(format!("Frechet distance is not finite ({fd}): covariances too large for f64?")));
    }
    Ok(fd)
}

/// tr sqrt(S1 S2) as the nuclear norm (sum of singular values) of S2^1/2 S1^1/2: its singular
/// values are the square roots of the eigenvalues of S1^1/2 S2 S1^1/2, which is similar to S1 S2.
///
/// Why singular values rather than sqrt(eigvalsh(S1^1/2 S2 S1^1/2)): with fewer images than
/// feature dimensions (1,000 samples, 1,280 or 2,048 features) the covariances are singular, and
/// the square root turns the ~1e-14 round-off on each of the hundreds of zero eigenvalues into
/// ~1e-7, which adds up to ~1e-4 for identical sets. Singular values are computed to an absolute
/// accuracy of eps times the largest, without a square root in front; eigenvalues below the
/// usual rank tolerance (largest x D x eps) of each covariance are treated as exact zeros.
fn trace_sqrt_product(s1: &Tensor, s2: &Tensor) -> Result<Tensor, tch::TchError> {
    let m = psd_sqrt(s2)?.f_mm(&psd_sqrt(s1)?)?;
    // Computing only the singular values (no U, V): the cheapest SVD path.
    let (_, singular, _) = m.f_svd(true, false)?;
    singular.f_sum(Kind::Double)
}

/// The symmetric square root of a covariance, with round-off-level eigenvalues set to zero.
fn psd_sqrt(s: &Tensor) -> Result<Tensor, tch::TchError> {
    let (evals, evecs) = s.f_linalg_eigh("L")?;
    let d = s.size()[0] as f64;
    let largest = evals.f_abs()?.f_max()?.f_double_value(&[])?;
    let tolerance = largest * d * f64::EPSILON;
    let kept = evals.f_where_scalarother(&evals.f_gt(tolerance)?, 0.0)?;
    evecs.f_mul(&kept.f_sqrt()?.f_unsqueeze(0)?)?.f_mm(&evecs.f_tr()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_sets_with_fewer_rows_than_dimensions_are_at_distance_zero() {
        // 40 images of 1,280 features: singular covariances, as in a small evaluation.
        tch::manual_seed(7);
        let x = Tensor::rand([40, 1280], (Kind::Float, tch::Device::Cpu)) * 3.0;
        let g = Gaussian::fit(&x).unwrap();
        let fd = frechet_distance(&g, &g).unwrap();
        assert!(fd.abs() < 1e-9, "FD of a set with itself: {fd}");
        let shifted = Gaussian::fit(&(&x + 0.01)).unwrap();
        let fd_shift = frechet_distance(&g, &shifted).unwrap();
        assert!((fd_shift - 1280.0 * 1e-4).abs() < 1e-6, "a pure shift by 0.01 in 1280 dims: {fd_shift}");
    }

    fn diag_gaussian(mean: &[f64], var: &[f64]) -> Gaussian {
        Gaussian { mean: Tensor::from_slice(mean), cov: Tensor::from_slice(var).diag(0), n: 10 }
    }

    #[test]
    fn diagonal_gaussians_match_the_closed_form() {
        // For diagonal covariances FD = sum (m1-m2)^2 + sum (sqrt v1 - sqrt v2)^2.
        let a = diag_gaussian(&[0.0, 1.0, 2.0], &[1.0, 4.0, 9.0]);
        let b = diag_gaussian(&[1.0, 1.0, 0.0], &[4.0, 1.0, 0.25]);
        let expected = (1.0 + 0.0 + 4.0) + (1.0 + 1.0 + 6.25);
        let fd = frechet_distance(&a, &b).unwrap();
        assert!((fd - expected).abs() < 1e-12, "{fd} vs {expected}");
    }

    #[test]
    fn fit_matches_numpy_cov() {
        // numpy.cov([[1,2],[3,5],[5,11]], rowvar=False) = [[4, 9], [9, 21]].
        let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 5.0, 5.0, 11.0]).reshape([3, 2]);
        let g = Gaussian::fit(&x).unwrap();
        let cov: Vec<f64> = Vec::try_from(g.cov.reshape([-1])).unwrap();
        assert_eq!(cov, vec![4.0, 9.0, 9.0, 21.0]);
        let mean: Vec<f64> = Vec::try_from(&g.mean).unwrap();
        assert_eq!(mean, vec![3.0, 6.0]);
        assert_eq!(g.n, 3);
    }

    #[test]
    fn singular_covariances_still_give_a_real_distance() {
        // Rank-1 covariances: the non-symmetric sqrtm route is ill-posed here.
        let a = Gaussian { mean: Tensor::zeros([2], (Kind::Double, Device::Cpu)), cov: Tensor::from_slice(&[1.0, 1.0, 1.0, 1.0]).reshape([2, 2]), n: 5 };
        let b = Gaussian { mean: Tensor::zeros([2], (Kind::Double, Device::Cpu)), cov: Tensor::from_slice(&[1.0, -1.0, -1.0, 1.0]).reshape([2, 2]), n: 5 };
        // The supports are orthogonal: tr sqrt(S1 S2) = 0, FD = tr S1 + tr S2 = 4.
        let fd = frechet_distance(&a, &b).unwrap();
        assert!((fd - 4.0).abs() < 1e-12, "{fd}");
    }

    #[test]
    fn bad_statistics_are_input_errors() {
        let a = diag_gaussian(&[0.0, 1.0], &[1.0, 1.0]);
        let wrong = Gaussian { mean: Tensor::zeros([2], (Kind::Double, Device::Cpu)), cov: Tensor::zeros([3, 3], (Kind::Double, Device::Cpu)), n: 4 };
        assert!(matches!(frechet_distance(&a, &wrong), Err(EvalError::Input(_))));
        let missing = vec![("mean".to_string(), Tensor::zeros([2], (Kind::Double, Device::Cpu)))];
        assert!(matches!(Gaussian::from_tensors(&missing), Err(EvalError::Input(_))));
    }
}
