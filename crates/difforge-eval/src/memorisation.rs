//! Memorisation: is a sample a near-copy of a training image? Each sample's distance to its
//! nearest training image (RMS pixel difference at the model's resolution) is divided by how far
//! training images typically are from their own nearest neighbour (the median over the training
//! set); a ratio below the threshold means the sample is closer to some training image than
//! training images are to each other. Held-out real images get the same statistic, as the
//! baseline a model that generalises should look like.

use crate::EvalError;
use serde::Serialize;
use tch::{Kind, Tensor};

/// At most this many training images estimate the typical neighbour distance (the full search
/// of every sample still covers the whole training split).
const BASELINE_IMAGES: i64 = 5000;
/// Rows of the distance matrix computed at once.
const CHUNK: i64 = 256;

#[derive(Debug, Clone, Serialize)]
pub struct Memorisation {
    pub samples: usize,
    pub train_images: usize,
    pub threshold: f64,
    /// Median RMS distance of a training image to its nearest other training image.
    pub train_neighbour_median: f64,
    /// Fraction of samples whose ratio is below the threshold.
    pub fraction_below: f64,
    /// The same fraction for held-out real images (None without any).
    pub heldout_fraction_below: Option<f64>,
    pub heldout_images: usize,
    pub median_ratio: f64,
    /// The closest sample/training pairs, closest first.
    pub closest: Vec<Pair>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Pair {
    pub sample: usize,
    pub train_id: String,
    #[serde(skip)]
    pub train_index: usize,
    pub distance: f64,
    pub ratio: f64,
}

/// Nearest-neighbour distances (and indices) of each row of `queries` among `reference` rows,
/// skipping `reference` row i for query i when `exclude_self` (the set against itself).
fn nearest(queries: &Tensor, reference: &Tensor, exclude_self: bool) -> Result<(Vec<f64>, Vec<i64>), EvalError> {
    let q = queries.to_kind(Kind::Double);
    let r = reference.to_kind(Kind::Double);
    let r_sq = r.square().sum_dim_intlist([1i64].as_slice(), false, Kind::Double);
    let (mut dist, mut index) = (Vec::new(), Vec::new());
    let n = q.size()[0];
    let mut start = 0;
    while start < n {
        let len = (n - start).min(CHUNK);
        let chunk = q.narrow(0, start, len);
        let q_sq = chunk.square().sum_dim_intlist([1i64].as_slice(), true, Kind::Double);
        let mut d2 = (q_sq + r_sq.unsqueeze(0) - chunk.matmul(&r.tr()) * 2.0).clamp_min(0.0);
        if exclude_self {
            let rows = Tensor::arange_start(start, start + len, (Kind::Int64, d2.device()));
            let _ = d2.index_put_(&[Some(Tensor::arange(len, (Kind::Int64, d2.device()))), Some(rows)], &Tensor::from(f64::INFINITY), false);
        }
        let (v, i) = d2.min_dim(1, false);
        let read = |e: tch::TchError| EvalError::Input(format!("reading nearest-neighbour distances: {e}"));
        dist.extend(Vec::<f64>::try_from(v.sqrt()).map_err(read)?);
        index.extend(Vec::<i64>::try_from(i).map_err(read)?);
        start += len;
    }
    Ok((dist, index))
}

/// `samples`, `train` and `heldout` are image batches at the same resolution (any layout that
/// flattens to one row per image). Distances are RMS over pixels.
pub fn memorisation(
    samples: &Tensor,
    train: &Tensor,
    train_ids: &[String],
    heldout: Option<&Tensor>,
    threshold: f64,
    show: usize,
) -> Result<Memorisation, EvalError> {
    let (n, m) = (samples.size()[0], train.size()[0]);
    if m < 2 || n < 1 {
        return Err(EvalError::Input(format!("memorisation needs samples and at least 2 training images (got {n} and {m})")));
    }
    let flat = |t: &Tensor| t.reshape([t.size()[0], -1]);
    let (s, t) = (flat(samples), flat(train));
    let pixels = s.size()[1] as f64;
    if t.size()[1] != s.size()[1] {
        return Err(EvalError::Input(format!("samples have {} values per image, training images {}", s.size()[1], t.size()[1])));
    }
    let rms = |d: Vec<f64>| d.into_iter().map(|v| v / pixels.sqrt()).collect::<Vec<_>>();
    let baseline = t.narrow(0, 0, m.min(BASELINE_IMAGES));
    let (train_nn, _) = nearest(&baseline, &baseline, true)?;
    let scale = median(&rms(train_nn)).max(1e-12);
    let (d, idx) = nearest(&s, &t, false)?;
    let ratios: Vec<f64> = rms(d).into_iter().map(|v| v / scale).collect();
    let below = |r: &[f64]| r.iter().filter(|&&x| x < threshold).count() as f64 / r.len().max(1) as f64;
    let (heldout_fraction_below, heldout_images) = match heldout {
        Some(h) if h.size()[0] > 0 => {
            let (hd, _) = nearest(&flat(h), &t, false)?;
            let hr: Vec<f64> = rms(hd).into_iter().map(|v| v / scale).collect();
            (Some(below(&hr)), hr.len())
        }
        _ => (None, 0),
    };
    let mut order: Vec<usize> = (0..ratios.len()).collect();
    order.sort_by(|&a, &b| ratios[a].total_cmp(&ratios[b]).then(a.cmp(&b)));
    let closest = order
        .iter()
        .take(show)
        .map(|&i| {
            let j = idx[i] as usize;
            Pair { sample: i, train_id: train_ids.get(j).cloned().unwrap_or_default(), train_index: j, distance: ratios[i] * scale, ratio: ratios[i] }
        })
        .collect();
    Ok(Memorisation {
        samples: n as usize,
        train_images: m as usize,
        threshold,
        train_neighbour_median: scale,
        fraction_below: below(&ratios),
        heldout_fraction_below,
        heldout_images,
        median_ratio: median(&ratios),
        closest,
    })
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn copies_are_flagged_and_fresh_images_are_not() {
        tch::manual_seed(0);
        let train = Tensor::rand([200, 1, 8, 8], (Kind::Float, Device::Cpu));
        let ids: Vec<String> = (0..200).map(|i| format!("t{i}")).collect();
        let fresh = Tensor::rand([50, 1, 8, 8], (Kind::Float, Device::Cpu));
        // Ten exact copies of training images 5..15 among 40 fresh samples.
        let samples = Tensor::cat(&[train.narrow(0, 5, 10), fresh.narrow(0, 0, 40)], 0);
        let m = memorisation(&samples, &train, &ids, Some(&fresh.narrow(0, 40, 10)), 0.5, 10).unwrap();
        assert_eq!(m.fraction_below, 0.2);
        assert_eq!(m.heldout_fraction_below, Some(0.0));
        assert_eq!(m.closest.len(), 10);
        assert!(m.closest.iter().all(|p| p.sample < 10 && p.distance < 1e-6 && p.train_index == p.sample + 5));
        assert_eq!(m.closest[0].train_id, "t5");
    }

    #[test]
    fn too_few_training_images_is_an_error() {
        let one = Tensor::zeros([1, 4], (Kind::Float, Device::Cpu));
        assert!(memorisation(&one, &one, &["a".into()], None, 0.5, 1).is_err());
    }
}
