//! Kernel Inception Distance (Binkowski et al. 2018) as torch-fidelity 0.4.0 computes it
//! (`torch_fidelity/metric_kid.py`): the unbiased estimate of MMD^2 under a polynomial kernel
//! k(x, y) = (gamma <x, y> + coef0)^degree, averaged over random equal-size subsets of the two
//! sets; the reported spread is the population standard deviation (numpy's default ddof = 0) of
//! the per-subset values.
//!
//! "Unbiased" is torch-fidelity's `mmd_est="unbiased"`: the within-set sums drop the diagonal and
//! divide by m(m-1), the cross sum keeps all m^2 terms and divides by m^2 (torchmetrics does the
//! same). It can be slightly negative for near-identical sets.
//!
//! Subsets come from our own generator (`ChaCha8Rng::seed_from_u64(seed)`), not numpy's
//! `RandomState`, so with several subsets smaller than the sets the numbers differ from
//! torch-fidelity's run to run by the subset noise; with one subset as large as both sets the draw
//! is a permutation and both give the same value. The parity test replays torch-fidelity's own
//! draws through [`mmd2_unbiased`] and [`Kid::from_mmd2`].

use super::{chunk_rows, features_f64, same_width, scalar, torch_err, Features};
use crate::EvalError;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// k(x, y) = (gamma <x, y> + coef0)^degree.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolyKernel {
    /// Polynomial degree, 3 in KID.
    pub degree: u32,
    /// Scale of the inner product; `None` means 1 / D (the feature width).
    pub gamma: Option<f64>,
    /// Constant added before raising to `degree`, 1 in KID.
    pub coef0: f64,
}

impl Default for PolyKernel {
    fn default() -> Self {
        PolyKernel { degree: 3, gamma: None, coef0: 1.0 }
    }
}

/// How KID is estimated; the defaults are torch-fidelity's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KidConfig {
    /// Number of subset pairs averaged.
    pub subsets: usize,
    /// Rows per subset, drawn without replacement from each set; clamped to the smaller set.
    pub subset_size: usize,
    /// Seed of the subset draws.
    pub seed: u64,
    /// The kernel.
    pub kernel: PolyKernel,
}

impl Default for KidConfig {
    fn default() -> Self {
        KidConfig { subsets: 100, subset_size: 1000, seed: 2020, kernel: PolyKernel::default() }
    }
}

/// KID estimate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kid {
    /// Mean of the per-subset MMD^2 values.
    pub mean: f64,
    /// Population standard deviation (ddof = 0) of the per-subset values, as torch-fidelity.
    pub std: f64,
    /// Number of subsets averaged.
    pub subsets: usize,
    /// Rows per subset actually used (after clamping to the smaller set).
    pub subset_size: usize,
}

impl Kid {
    /// Mean and population standard deviation of per-subset MMD^2 values, computed like
    /// `numpy.mean` / `numpy.std`.
    pub fn from_mmd2(values: &[f64], subset_size: usize) -> Result<Kid, EvalError> {
        if values.is_empty() {
            return Err(EvalError::Input("KID needs at least one subset value".to_string()));
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        Ok(Kid { mean, std: var.sqrt(), subsets: values.len(), subset_size })
    }
}

/// KID between two feature sets `[N1, D]` and `[N2, D]`.
pub fn kid(real: &Tensor, fake: &Tensor, config: &KidConfig) -> Result<Kid, EvalError> {
    let device = real.device();
    let r = features_f64("real", real, device)?;
    let f = features_f64("fake", fake, device)?;
    same_width("real", &r, "fake", &f)?;
    check_kernel(&config.kernel)?;
    if config.subsets == 0 {
        return Err(EvalError::Input("KID needs at least 1 subset, got 0".to_string()));
    }
    // Clamped rather than refused (torch-fidelity refuses): small evaluation sets are common in
    // quick runs, and the size used is reported in the result.
    let size = config.subset_size.min(r.rows).min(f.rows);
    if size < 2 {
        return Err(EvalError::Input(format!(
            "KID needs subsets of at least 2 rows: subset size {} with {} real and {} fake rows",
            config.subset_size, r.rows, f.rows
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut values = Vec::with_capacity(config.subsets);
    for _ in 0..config.subsets {
        // Real first, then fake, as torch-fidelity orders its draws.
        let xr = draw(&r, size, &mut rng)?;
        let xf = draw(&f, size, &mut rng)?;
        values.push(mmd2(&xr, &xf, &config.kernel)?);
    }
    Kid::from_mmd2(&values, size)
}

/// Unbiased MMD^2 between two equal-size sets `[m, D]` (torch-fidelity's `kernel_mmd` with the
/// polynomial kernel): one KID subset.
pub fn mmd2_unbiased(x: &Tensor, y: &Tensor, kernel: &PolyKernel) -> Result<f64, EvalError> {
    let device = x.device();
    let a = features_f64("first", x, device)?;
    let b = features_f64("second", y, device)?;
    same_width("first", &a, "second", &b)?;
    check_kernel(kernel)?;
    if a.rows != b.rows {
        return Err(EvalError::Input(format!("MMD^2 subsets must have equal sizes, got {} and {} rows", a.rows, b.rows)));
    }
    if a.rows < 2 {
        return Err(EvalError::Input(format!("MMD^2 needs at least 2 rows per set, got {}", a.rows)));
    }
    mmd2(&a, &b, kernel)
}

fn check_kernel(kernel: &PolyKernel) -> Result<(), EvalError> {
    if kernel.degree == 0 {
        return Err(EvalError::Input("KID kernel degree must be at least 1, got 0".to_string()));
    }
    if let Some(g) = kernel.gamma {
        if !g.is_finite() {
            return Err(EvalError::Input(format!("KID kernel gamma must be finite, got {g}")));
        }
    }
    if !kernel.coef0.is_finite() {
        return Err(EvalError::Input(format!("KID kernel coef0 must be finite, got {}", kernel.coef0)));
    }
    Ok(())
}

fn draw(set: &Features, size: usize, rng: &mut ChaCha8Rng) -> Result<Features, EvalError> {
    let idx: Vec<i64> = rand::seq::index::sample(rng, set.rows, size).into_iter().map(|i| i as i64).collect();
    let index = Tensor::from_slice(&idx).f_to_device(set.x.device()).map_err(torch_err("moving subset indices"))?;
    let x = set.x.f_index_select(0, &index).map_err(torch_err("selecting a KID subset"))?;
    Ok(Features { x, rows: size, cols: set.cols })
}

/// (sum K_xx - tr K_xx + sum K_yy - tr K_yy) / (m (m - 1)) - 2 sum K_xy / m^2.
fn mmd2(x: &Features, y: &Features, kernel: &PolyKernel) -> Result<f64, EvalError> {
    let m = x.rows as f64;
    let gamma = kernel.gamma.unwrap_or(1.0 / x.cols as f64);
    let kxx = kernel_sum(&x.x, &x.x, gamma, kernel)? - kernel_trace(&x.x, gamma, kernel)?;
    let kyy = kernel_sum(&y.x, &y.x, gamma, kernel)? - kernel_trace(&y.x, gamma, kernel)?;
    let kxy = kernel_sum(&x.x, &y.x, gamma, kernel)?;
    Ok((kxx + kyy) / (m * (m - 1.0)) - 2.0 * kxy / (m * m))
}

/// Sum of all kernel values between rows of `a` and rows of `b`, in row blocks so that large
/// subsets never hold a full m x m matrix.
fn kernel_sum(a: &Tensor, b: &Tensor, gamma: f64, kernel: &PolyKernel) -> Result<f64, EvalError> {
    let rows = a.size()[0];
    let chunk = chunk_rows(b.size()[0] as usize) as i64;
    let bt = b.f_tr().map_err(torch_err("transposing KID features"))?;
    let mut total = 0.0;
    let mut start = 0;
    while start < rows {
        let len = chunk.min(rows - start);
        let block = (|| {
            a.f_narrow(0, start, len)?
                .f_mm(&bt)?
                .f_mul_scalar(gamma)?
                .f_add_scalar(kernel.coef0)?
                .f_pow_tensor_scalar(kernel.degree as i64)?
                .f_sum(Kind::Double)
        })()
        .map_err(torch_err("summing the KID kernel"))?;
        total += scalar(&block, "reading a KID kernel sum")?;
        start += len;
    }
    Ok(total)
}

/// Sum of k(x_i, x_i) over the rows: the diagonal that the unbiased estimate leaves out.
fn kernel_trace(a: &Tensor, gamma: f64, kernel: &PolyKernel) -> Result<f64, EvalError> {
    let t = (|| {
        a.f_mul(a)?
            .f_sum_dim_intlist(1, false, Kind::Double)?
            .f_mul_scalar(gamma)?
            .f_add_scalar(kernel.coef0)?
            .f_pow_tensor_scalar(kernel.degree as i64)?
            .f_sum(Kind::Double)
    })()
    .map_err(torch_err("summing the KID kernel diagonal"))?;
    scalar(&t, "reading the KID kernel diagonal")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn std_is_the_population_std() {
        let k = Kid::from_mmd2(&[1.0, 2.0, 3.0, 4.0], 10).unwrap();
        assert_eq!(k.mean, 2.5);
        assert!((k.std - 1.25f64.sqrt()).abs() < 1e-15);
        assert_eq!((k.subsets, k.subset_size), (4, 10));
    }

    #[test]
    fn mmd2_matches_a_hand_computation() {
        // 1-D sets x = {0, 1}, y = {1, 2}, linear kernel (degree 1, gamma 1, coef0 0):
        // K_xx off-diagonal sum 0, K_yy off-diagonal sum 4, K_xy sum 1+2+0+0 = 3 (x=0 rows are 0).
        // MMD^2 = (0 + 4) / 2 - 2 * 3 / 4 = 0.5.
        let x = Tensor::from_slice(&[0.0f32, 1.0]).reshape([2, 1]);
        let y = Tensor::from_slice(&[1.0f32, 2.0]).reshape([2, 1]);
        let kernel = PolyKernel { degree: 1, gamma: Some(1.0), coef0: 0.0 };
        let v = mmd2_unbiased(&x, &y, &kernel).unwrap();
        assert!((v - 0.5).abs() < 1e-15, "{v}");
    }

    #[test]
    fn subset_size_is_clamped_and_draws_are_seeded() {
        let x = Tensor::randn([30, 4], (Kind::Float, tch::Device::Cpu));
        let y = Tensor::randn([20, 4], (Kind::Float, tch::Device::Cpu));
        let config = KidConfig { subsets: 3, ..KidConfig::default() };
        let a = kid(&x, &y, &config).unwrap();
        let b = kid(&x, &y, &config).unwrap();
        assert_eq!(a, b);
        assert_eq!((a.subsets, a.subset_size), (3, 20));
    }
}
