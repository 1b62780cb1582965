//! The training loss of one micro-batch: draw each image's timestep, noise (and offset noise)
//! and condition dropout from (seed, draw index), push the images through the forward process,
//! and take the weighted loss (MSE or Huber) between the network's prediction and the target
//! (over the pixels a loss mask keeps). Everything random here is derived from
//! the draw index, so a step can be recomputed exactly after a resume.

use difforge_core::{rng_for, Stream};
use difforge_data::Batch;
use difforge_diffusion::noise::gaussian;
use difforge_model::{DiffusionModel, Weights};
use difforge_nn::Conditioning;
use std::ops::Range;
use tch::{Device, Kind, Tensor};

/// Draw indices of the offset noise live apart from the images' noise (and from the prior
/// batches', `step::PRIOR_DRAWS`).
const NOISE_OFFSET_DRAWS: u64 = 1 << 61;

/// A host tensor on `dev`. On CUDA through page-locked memory and an asynchronous copy, so the
/// host goes on launching the step's kernels while the batch travels (libtorch's host
/// allocator does not reuse the pinned block before the copy has ended); elsewhere, or if the
/// memory cannot be pinned, a plain copy. Pinned through the native layer: tch's
/// `pin_memory(device)` passes the device argument libtorch deprecates, with a warning at every
/// call.
fn upload(t: &Tensor, dev: Device) -> Tensor {
    match dev {
        Device::Cuda(_) => match difforge_native::pin_memory(t) {
            Ok(pinned) => pinned.to_device_(dev, t.kind(), true, false),
            Err(e) => {
                warn_unpinned(&e);
                t.to_device(dev)
            }
        },
        _ => t.to_device(dev),
    }
}

/// Says once per process that uploads are synchronous (a failure to pin repeats at every batch).
fn warn_unpinned(e: &difforge_native::NativeError) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| tracing::warn!("batches are uploaded without pinned memory (synchronous copies): {e}"));
}

/// The tensors of one micro-batch.
pub struct MicroBatch {
    x_t: Tensor,
    t: Tensor,
    cond: Conditioning,
    target: Tensor,
    weights: Tensor,
    /// With masked loss: the square root of how much each of the network's output positions
    /// counts (N, 1, h, w).
    mask: Option<Tensor>,
}

impl MicroBatch {
    /// The micro-batch of `batch` for draw number `draw_index` (step x grad_accum + micro).
    pub fn new(model: &DiffusionModel, batch: &Batch, draw_index: u64) -> MicroBatch {
        MicroBatch::rows(model, batch, draw_index, 0..batch.size)
    }

    /// The rows `rows` of the micro-batch of `batch` (a data-parallel rank's share). The draws
    /// are those of the whole batch, so the ranks together train on exactly what one process
    /// would; only the rows' pixels are encoded.
    pub fn rows(model: &DiffusionModel, batch: &Batch, draw_index: u64, rows: Range<usize>) -> MicroBatch {
        let cfg = model.config();
        let dev = model.device();
        let n = batch.size as i64;
        let (start, len) = (rows.start as i64, rows.len() as i64);
        let mut rng = rng_for(cfg.seed, Stream::Noise, draw_index);
        let ts: Vec<usize> = (0..n).map(|_| cfg.diffusion.draw_timestep(&mut rng)).collect();
        let cond = model.family().training_conditioning(batch, cfg.diffusion.class_dropout, &mut rng, dev);
        let pixels = upload(&Tensor::from_slice(&batch.images).view(batch.shape()).narrow(0, start, len), dev);
        let x0 = model.codec().encode(&pixels);
        // A bucketed batch has its bucket's shape, not the model's.
        let [lc, lh, lw] = model.codec().latent_shape([batch.channels as i64, batch.height as i64, batch.width as i64]);
        let eps = gaussian(cfg.seed, Stream::Noise, draw_index, (n * lc * lh * lw) as usize);
        let mut eps = Tensor::from_slice(&eps).view([n, lc, lh, lw]);
        if cfg.diffusion.noise_offset > 0.0 {
            let offset = gaussian(cfg.seed, Stream::Noise, draw_index | NOISE_OFFSET_DRAWS, (n * lc) as usize);
            eps += Tensor::from_slice(&offset).view([n, lc, 1, 1]) * cfg.diffusion.noise_offset;
        }
        let eps = upload(&eps.narrow(0, start, len), dev);
        let mask = (!batch.masks.is_empty()).then(|| {
            let m = Tensor::from_slice(&batch.masks).view([n, 1, batch.height as i64, batch.width as i64]).narrow(0, start, len);
            // At the network's resolution (the share of each latent's pixels that count), as a
            // square root: scaling prediction and target by it scales the squared error by the
            // mask itself.
            upload(&m.adaptive_avg_pool2d([lh, lw]).sqrt(), dev)
        });
        let (ts, cond) = if len == n { (ts, cond) } else { (ts[rows].to_vec(), cond.narrow(start, len)) };
        let noised = model.forward_process().noise(&x0, &eps, &ts, dev);
        let weights: Vec<f32> = noised.weights.iter().map(|&w| w as f32).collect();
        let ts: Vec<i64> = ts.iter().map(|&t| t as i64).collect();
        MicroBatch {
            x_t: noised.x_t,
            t: upload(&Tensor::from_slice(&ts), dev),
            cond,
            target: noised.target,
            weights: upload(&Tensor::from_slice(&weights), dev),
            mask,
        }
    }

    /// Every input tensor of [`loss`](MicroBatch::loss), in a fixed order: what a CUDA graph of
    /// the loss reads, and copies new micro-batches into.
    pub fn inputs(&self) -> Vec<&Tensor> {
        let mut inputs = vec![&self.x_t, &self.t, &self.target, &self.weights];
        inputs.extend(&self.mask);
        inputs.extend(self.cond.tensors());
        inputs
    }

    /// The shape and dtype of each input: two micro-batches with the same signature can share
    /// one captured graph.
    pub fn signature(&self) -> Vec<(Vec<i64>, Kind)> {
        self.inputs().iter().map(|t| (t.size(), t.kind())).collect()
    }

    /// The weighted loss (`diffusion.loss`) of the raw network's prediction (dropout on); with
    /// a mask, of the prediction and target scaled by its square root: for MSE, kohya's
    /// per-element loss times the mask, averaged over every position.
    pub fn loss(&self, model: &DiffusionModel) -> Tensor {
        let out = model.predict(Weights::Raw, &self.x_t, &self.t, &self.cond, true);
        let loss = model.config().diffusion.loss_fn();
        match &self.mask {
            Some(m) => loss.weighted(&(out * m), &(&self.target * m), &self.weights),
            None => loss.weighted(&out, &self.target, &self.weights),
        }
    }
}
