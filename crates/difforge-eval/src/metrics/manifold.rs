//! k-nearest-neighbour manifold metrics, exactly as the `prdc` package (0.2) computes them:
//!
//! - each point's radius is the distance to its k-th nearest neighbour in its own set, taken as
//!   the (k+1)-th smallest distance with the zero self-distance included (prdc's
//!   `get_kth_value(distances, k + 1)`);
//! - precision (Kynkaanniemi et al. 2019): fraction of fake points strictly inside at least one
//!   real ball, d(real_i, fake_j) < r_real_i;
//! - recall: fraction of real points strictly inside at least one fake ball;
//! - density (Naeem et al. 2020): the number of (real ball, fake point) containments divided by
//!   k and by the number of fake points; not bounded by 1;
//! - coverage: fraction of real balls that contain at least one fake point (nearest fake point
//!   strictly closer than the radius).
//!
//! F1 = 2PR / (P + R), 0 when both are 0.
//!
//! Distances are Euclidean, computed in f64 as |a|^2 + |b|^2 - 2 a.b in row blocks (sets of
//! thousands of rows would not fit as full matrices), and compared squared: squaring is monotone
//! on non-negative numbers, so `d < r` and `d^2 < r^2` decide alike.

use super::{chunk_rows, features_f64, same_width, scalar, torch_err, Features};
use crate::EvalError;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// The k used by prdc's examples and by Naeem et al.
pub const DEFAULT_NEAREST_K: usize = 3;

/// Manifold metrics of a fake set against a real set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifold {
    /// Neighbours defining each ball's radius.
    pub k: usize,
    pub precision: f64,
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    pub density: f64,
    pub coverage: f64,
    /// Rows in the real set.
    pub real: usize,
    /// Rows in the fake set.
    pub fake: usize,
}

/// Precision, recall, F1, density and coverage of `fake` `[M, D]` against `real` `[N, D]`, with
/// k-th-nearest-neighbour radii. Needs N > k and M > k (k neighbours besides the point itself).
pub fn manifold(real: &Tensor, fake: &Tensor, k: usize) -> Result<Manifold, EvalError> {
    let device = real.device();
    let r = features_f64("real", real, device)?;
    let f = features_f64("fake", fake, device)?;
    same_width("real", &r, "fake", &f)?;
    if k == 0 {
        return Err(EvalError::Input("nearest-neighbour k must be at least 1, got 0".to_string()));
    }
    for (name, set) in [("real", &r), ("fake", &f)] {
        if set.rows <= k {
            return Err(EvalError::Input(format!("{name} set has {} rows; k = {k} nearest neighbours need at least {}", set.rows, k + 1)));
        }
    }
    let r_norms = squared_norms(&r.x)?;
    let f_norms = squared_norms(&f.x)?;
    let r_radii = radii_squared(&r, &r_norms, k)?;
    let f_radii = radii_squared(&f, &f_norms, k)?;
    let counts = count_containments(&r, &r_norms, &r_radii, &f, &f_norms, &f_radii)?;

    let (n_real, n_fake) = (r.rows as f64, f.rows as f64);
    let precision = counts.precision as f64 / n_fake;
    let recall = counts.recall as f64 / n_real;
    // The same operations in the same order as prdc's `(1. / k) * counts.mean()`.
    let density = (1.0 / k as f64) * (counts.density as f64 / n_fake);
    let coverage = counts.coverage as f64 / n_real;
    let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
    Ok(Manifold { k, precision, recall, f1, density, coverage, real: r.rows, fake: f.rows })
}

fn squared_norms(x: &Tensor) -> Result<Tensor, EvalError> {
    x.f_mul(x).and_then(|t| t.f_sum_dim_intlist(1, false, Kind::Double)).map_err(torch_err("computing squared norms"))
}

/// Squared Euclidean distances between rows `start..start+len` of `a` and all rows of `b`,
/// clamped at 0 against round-off.
fn block_distances(a: &Tensor, a_norms: &Tensor, start: i64, len: i64, b_t: &Tensor, b_norms: &Tensor) -> Result<Tensor, tch::TchError> {
    let rows = a.f_narrow(0, start, len)?;
    let rn = a_norms.f_narrow(0, start, len)?.f_unsqueeze(1)?;
    rows.f_mm(b_t)?.f_mul_scalar(-2.0)?.f_add(&rn)?.f_add(&b_norms.f_unsqueeze(0)?)?.f_clamp_min(0.0)
}

/// Squared distance from each row to its k-th nearest neighbour in the same set: the (k+1)-th
/// smallest squared distance of its row, self included.
fn radii_squared(set: &Features, norms: &Tensor, k: usize) -> Result<Tensor, EvalError> {
    let rows = set.rows as i64;
    let chunk = chunk_rows(set.rows) as i64;
    let run = || -> Result<Tensor, tch::TchError> {
        let xt = set.x.f_tr()?;
        let mut parts = Vec::new();
        let mut start = 0;
        while start < rows {
            let len = chunk.min(rows - start);
            let d = block_distances(&set.x, norms, start, len, &xt, norms)?;
            let (smallest, _) = d.f_topk(k as i64 + 1, 1, false, true)?;
            parts.push(smallest.f_select(1, k as i64)?);
            start += len;
        }
        Tensor::f_cat(&parts, 0)
    };
    run().map_err(torch_err("computing nearest-neighbour radii"))
}

struct Counts {
    /// Fake points inside at least one real ball.
    precision: i64,
    /// Real points inside at least one fake ball.
    recall: i64,
    /// (real ball, fake point) containments.
    density: i64,
    /// Real balls whose nearest fake point lies inside.
    coverage: i64,
}

/// One pass over real-fake distance blocks (real rows in chunks) gathers all four counts.
fn count_containments(r: &Features, r_norms: &Tensor, r_radii: &Tensor, f: &Features, f_norms: &Tensor, f_radii: &Tensor) -> Result<Counts, EvalError> {
    let rows = r.rows as i64;
    let chunk = chunk_rows(f.rows) as i64;
    let run = || -> Result<(Tensor, Tensor, Tensor, Tensor), tch::TchError> {
        let ft = f.x.f_tr()?;
        let f_radii_row = f_radii.f_unsqueeze(0)?;
        let device = r.x.device();
        let mut fake_covered = Tensor::f_zeros([f.rows as i64], (Kind::Bool, device))?;
        let mut containments = Tensor::f_zeros([], (Kind::Int64, device))?;
        let mut recalled = Tensor::f_zeros([], (Kind::Int64, device))?;
        let mut covered = Tensor::f_zeros([], (Kind::Int64, device))?;
        let mut start = 0;
        while start < rows {
            let len = chunk.min(rows - start);
            let d = block_distances(&r.x, r_norms, start, len, &ft, f_norms)?;
            let radii = r_radii.f_narrow(0, start, len)?;
            let inside_real = d.f_lt_tensor(&radii.f_unsqueeze(1)?)?;
            fake_covered = fake_covered.f_logical_or(&inside_real.f_any_dim(0, false)?)?;
            containments = containments.f_add(&inside_real.f_sum(Kind::Int64)?)?;
            let nearest = d.f_amin(1, false)?;
            covered = covered.f_add(&nearest.f_lt_tensor(&radii)?.f_sum(Kind::Int64)?)?;
            let inside_fake = d.f_lt_tensor(&f_radii_row)?.f_any_dim(1, false)?;
            recalled = recalled.f_add(&inside_fake.f_sum(Kind::Int64)?)?;
            start += len;
        }
        Ok((fake_covered.f_sum(Kind::Int64)?, recalled, containments, covered))
    };
    let (p, rc, d, c) = run().map_err(torch_err("counting manifold containments"))?;
    let read = |t: &Tensor| scalar(t, "reading a manifold count").map(|v| v as i64);
    Ok(Counts { precision: read(&p)?, recall: read(&rc)?, density: read(&d)?, coverage: read(&c)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(values: &[f32]) -> Tensor {
        Tensor::from_slice(values).reshape([values.len() as i64, 1])
    }

    #[test]
    fn one_dimensional_example_by_hand() {
        // Real {0, 1, 2, 3}, k = 1: radii 1, 1, 1, 1. Fake {0.5, 2.9, 10}, k = 1: radii 2.4,
        // 2.4, 7.1.
        // Precision: 0.5 (in balls of 0 and 1), 2.9 (in balls of 2 and 3), 10 in none -> 2/3.
        // Density: (2 + 2 + 0) / (1 * 3) = 4/3.
        // Coverage: nearest fakes 0.5, 0.5, 2.9, 2.9 -> distances 0.5, 0.5, 0.9, 0.1, all < 1 -> 1.
        // Recall: real 0 (0.5 away from fake 0.5, radius 2.4), 1, 2, 3 all inside -> 1.
        let m = manifold(&line(&[0.0, 1.0, 2.0, 3.0]), &line(&[0.5, 2.9, 10.0]), 1).unwrap();
        assert!((m.precision - 2.0 / 3.0).abs() < 1e-15);
        assert!((m.density - 4.0 / 3.0).abs() < 1e-15);
        assert_eq!(m.coverage, 1.0);
        assert_eq!(m.recall, 1.0);
        assert!((m.f1 - 0.8).abs() < 1e-15);
        assert_eq!((m.real, m.fake, m.k), (4, 3, 1));
    }

    #[test]
    fn a_point_on_the_ball_boundary_is_outside() {
        // Real {0, 2}, k = 1: both radii 2. Fake {4, 5}: 4 is exactly 2 from real 2, so it is
        // not inside (strict <, as prdc).
        let m = manifold(&line(&[0.0, 2.0]), &line(&[4.0, 5.0]), 1).unwrap();
        assert_eq!(m.precision, 0.0);
        assert_eq!(m.f1, 0.0);
    }

    #[test]
    fn too_few_rows_is_an_input_error() {
        let err = manifold(&line(&[0.0, 1.0, 2.0]), &line(&[0.0, 1.0, 2.0, 3.0]), 3).unwrap_err();
        assert!(matches!(&err, EvalError::Input(m) if m.contains("real set has 3 rows")), "{err}");
    }
}
