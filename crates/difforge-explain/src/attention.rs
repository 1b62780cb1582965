//! Where self-attention looks: for one query pixel of a sample, the attention weights of every
//! attention layer (averaged over heads) at chosen steps of its trajectory, as maps over the
//! image (each layer's map sums to one over its own resolution before being upsampled).

use crate::trajectory::Trajectory;
use crate::Subject;
use difforge_model::{ModelError, Weights};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

pub struct AttentionMap {
    pub layer: String,
    pub step: usize,
    pub t: usize,
    /// (side, side) at the layer's resolution, summing to one.
    pub map: Tensor,
}

#[derive(Serialize)]
pub struct AttentionSummary {
    pub pixel: (i64, i64),
    pub layers: Vec<String>,
    pub steps: Vec<usize>,
    /// Sum of each map (1 up to rounding).
    pub sums: Vec<f64>,
}

/// Attention maps of image `index` of the subject for query pixel (x, y) of the full image. A
/// network that does not expose its attention gives none.
pub fn attention(s: &Subject, traj: &Trajectory, steps: &[usize], index: i64, pixel: (i64, i64)) -> Result<Vec<AttentionMap>, ModelError> {
    let m = s.model;
    let side = s.shape()[1];
    let (cond, _) = m.encode(std::slice::from_ref(&s.condition))?;
    let mut out = Vec::new();
    for &k in steps {
        let (_, t) = traj.steps[k];
        let x = traj.x_t[k].narrow(0, index, 1).to_device(m.device());
        let tt = Tensor::from_slice(&[t as i64]).to_device(m.device());
        let Some((_, layers)) = tch::no_grad(|| m.network(Weights::Ema).forward_with_attention(&x, &tt, &cond)) else { return Ok(out) };
        for (name, w) in layers {
            let tokens = w.size()[2];
            let ls = (tokens as f64).sqrt().round() as i64;
            let (qx, qy) = (pixel.0 * ls / side, pixel.1 * ls / side);
            let row = w.get(0).mean_dim([0i64].as_slice(), false, Kind::Float).get(qy * ls + qx);
            out.push(AttentionMap { layer: name, step: k, t, map: row.view([ls, ls]).to_device(Device::Cpu) });
        }
    }
    Ok(out)
}

/// Upsamples a layer map to the image size (nearest) for display.
pub fn upsample(map: &Tensor, side: i64) -> Tensor {
    map.unsqueeze(0).unsqueeze(0).upsample_nearest2d([side, side], None, None).squeeze_dim(0).squeeze_dim(0)
}
