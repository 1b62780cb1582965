//! `train.cuda_graphs`: a micro-batch's forward pass, loss and backward pass captured once in a
//! CUDA graph and replayed for every later micro-batch of the same shapes. A small network on a
//! fast card spends most of its step launching kernels one by one; a replay launches them all at
//! once. The optimiser, clipping and EMA stay outside the graph: they are three kernels over
//! flat buffers already, and the step reads the loss and gradient norm on the host to decide
//! whether to apply it.
//!
//! The graph's static inputs are the first micro-batch's own tensors; each later micro-batch is
//! copied into them before a replay. Its outputs are the loss tensor and the gradients, which
//! accumulate in place into the optimiser's flat gradient buffer exactly as an eager backward
//! does (the graph never zeroes them, so gradient accumulation works unchanged).
//!
//! Before it is trusted, a captured graph is replayed on the micro-batch it was captured with
//! and must give the loss and gradient norm of the eager warm-up runs (a model with dropout draws
//! other units in a replay, so there only the capture itself is checked). A capture that fails
//! or disagrees leaves the run eager, with a warning saying why.

use crate::loss::MicroBatch;
use difforge_config::{ModelConfig, RunConfig};
use difforge_model::DiffusionModel;
use difforge_native::CudaGraph;
use difforge_nn::AdamW;
use tch::{Device, Kind, Tensor};

/// Eager runs before the capture (PyTorch's make_graphed_callables runs 3).
const WARMUP: usize = 3;
/// How far the replayed loss and gradient norm may be from the eager ones (relative): the same
/// kernels run on the same inputs, so only a different reduction order would move them.
const AGREEMENT: f64 = 1e-3;

/// The run's graph, as far as it got.
pub enum StepGraphs {
    /// `train.cuda_graphs` is off.
    Off,
    /// On, not captured yet: the next micro-batch that starts a step is captured.
    Pending {
        device: usize,
        check: bool,
    },
    Captured(CapturedStep),
    /// The capture failed or disagreed; the run stays eager.
    Failed,
}

/// A captured forward-and-backward pass.
pub struct CapturedStep {
    graph: CudaGraph,
    /// The static inputs (the first micro-batch's tensors).
    inputs: MicroBatch,
    /// The loss the graph writes (divided by `accum`).
    loss: Tensor,
    accum: f64,
}

impl StepGraphs {
    /// The graphs of run `cfg` on `device`.
    pub fn for_run(cfg: &RunConfig, device: Device) -> StepGraphs {
        let unet_dropout = matches!(&cfg.model, ModelConfig::PixelUnet(u) if u.dropout > 0.0);
        let lora_dropout = cfg.lora.as_ref().is_some_and(|l| l.dropout > 0.0);
        StepGraphs::new(cfg.train.cuda_graphs, device, unet_dropout || lora_dropout)
    }

    /// The graphs of a run on `device`; `dropout` says whether the network draws dropout masks
    /// in training (then a replay cannot be checked against the eager step).
    pub fn new(cuda_graphs: bool, device: Device, dropout: bool) -> StepGraphs {
        match (cuda_graphs, device) {
            (false, _) => StepGraphs::Off,
            (true, Device::Cuda(n)) => StepGraphs::Pending { device: n, check: !dropout },
            (true, other) => {
                tracing::warn!("train.cuda_graphs: the run is on {other:?}, not a CUDA device; training eagerly");
                StepGraphs::Off
            }
        }
    }

    /// What became of the graph: "off", "pending" (nothing captured yet), "captured", "failed".
    pub fn state(&self) -> &'static str {
        match self {
            StepGraphs::Off => "off",
            StepGraphs::Pending { .. } => "pending",
            StepGraphs::Captured(_) => "captured",
            StepGraphs::Failed => "failed",
        }
    }

    /// Runs the forward and backward pass of `mb` (loss divided by `accum`, the micro-batches
    /// per step) through the graph, capturing it first when none is; returns the loss, or gives
    /// `mb` back when it must run eagerly (graphs off or failed, or shapes the graph was not captured for). `grads_zero`
    /// says that no micro-batch has accumulated into the gradients of this step yet: the
    /// capture's warm-up runs do, and are zeroed after.
    pub fn forward_backward(&mut self, model: &DiffusionModel, opt: &mut AdamW, mb: MicroBatch, accum: f64, grads_zero: bool) -> Result<Tensor, MicroBatch> {
        match self {
            StepGraphs::Captured(step) if step.fits(&mb, accum) => Ok(step.replay(&mb)),
            StepGraphs::Pending { device, check } if grads_zero => {
                let (device, check) = (*device, *check);
                match CapturedStep::capture(model, opt, mb, accum, device, check) {
                    Ok((step, loss)) => {
                        tracing::info!("train.cuda_graphs: the forward and backward pass is captured in a CUDA graph");
                        *self = StepGraphs::Captured(step);
                        Ok(loss)
                    }
                    Err((why, mb)) => {
                        tracing::warn!("train.cuda_graphs: {why}; training eagerly");
                        *self = StepGraphs::Failed;
                        Err(*mb)
                    }
                }
            }
            _ => Err(mb),
        }
    }
}

impl CapturedStep {
    /// Warms up, captures and checks. On success the gradients hold exactly one backward pass
    /// of `mb` (the replay's) and the loss is returned with the graph; on failure the gradients
    /// are zero again and `mb` comes back for the eager step.
    fn capture(
        model: &DiffusionModel,
        opt: &mut AdamW,
        mb: MicroBatch,
        accum: f64,
        device: usize,
        check: bool,
    ) -> Result<(CapturedStep, Tensor), (String, Box<MicroBatch>)> {
        let mut loss = None;
        let mut eager: Option<(f64, f64)> = None;
        let mut runs = 0;
        let opt_ref: &AdamW = opt;
        let captured = CudaGraph::capture(device, WARMUP, || {
            let l = mb.loss(model) / accum;
            l.backward();
            if runs == 0 {
                // The first warm-up run's loss and gradient norm: what a replay must give.
                eager = Some((l.double_value(&[]), opt_ref.grad_norm()));
            }
            runs += 1;
            loss = Some(l);
            Ok(())
        });
        // The warm-up runs accumulated into the gradients; the replays start from zero.
        opt.zero_grad();
        let (graph, loss) = match (captured, loss) {
            (Ok(graph), Some(loss)) => (graph, loss),
            (Err(e), _) => return Err((e.to_string(), Box::new(mb))),
            (Ok(_), None) => return Err(("the capture ran nothing".into(), Box::new(mb))),
        };
        let step = CapturedStep { graph, inputs: mb, loss, accum };
        if let Err(e) = step.graph.replay() {
            opt.zero_grad();
            return Err((format!("the first replay failed: {e}"), Box::new(step.inputs)));
        }
        let replayed = (step.loss.double_value(&[]), opt.grad_norm());
        if let (true, Some(eager)) = (check, eager) {
            if !agrees(eager.0, replayed.0) || !agrees(eager.1, replayed.1) {
                opt.zero_grad();
                let why =
                    format!("the graph's loss and gradient norm ({}, {}) differ from the eager step's ({}, {})", replayed.0, replayed.1, eager.0, eager.1);
                return Err((why, Box::new(step.inputs)));
            }
        }
        let loss = step.loss.detach().copy();
        Ok((step, loss))
    }

    /// True when `mb` has the captured micro-batch's shapes (and divisor).
    fn fits(&self, mb: &MicroBatch, accum: f64) -> bool {
        accum == self.accum && mb.signature() == self.inputs.signature()
    }

    /// Copies `mb` into the static inputs and replays; returns a copy of the loss (the graph
    /// overwrites its own at the next replay).
    fn replay(&self, mb: &MicroBatch) -> Tensor {
        tch::no_grad(|| {
            for (dst, src) in self.inputs.inputs().into_iter().zip(mb.inputs()) {
                dst.shallow_clone().copy_(src);
            }
        });
        match self.graph.replay() {
            Ok(()) => self.loss.detach().copy(),
            // Nothing sensible to train on: a NaN loss makes the step skip its update, and the
            // trainer's rollback and error handling take it from there.
            Err(e) => {
                tracing::error!("train.cuda_graphs: a replay failed: {e}");
                Tensor::from(f32::NAN).to_kind(Kind::Float).to_device(self.loss.device())
            }
        }
    }
}

/// Whether two finite numbers agree to [`AGREEMENT`] (relative to the larger).
fn agrees(a: f64, b: f64) -> bool {
    a.is_finite() && b.is_finite() && (a - b).abs() <= AGREEMENT * a.abs().max(b.abs()).max(1e-12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_is_relative_and_refuses_non_finite_values() {
        assert!(agrees(1.0, 1.0005));
        assert!(!agrees(1.0, 1.01));
        assert!(agrees(1e-8, 1.0005e-8));
        assert!(!agrees(f64::NAN, f64::NAN));
        assert!(!agrees(1.0, f64::INFINITY));
    }

    #[test]
    fn graphs_are_off_unless_asked_for_on_a_cuda_device() {
        assert!(matches!(StepGraphs::new(false, Device::Cuda(0), false), StepGraphs::Off));
        assert!(matches!(StepGraphs::new(true, Device::Cpu, false), StepGraphs::Off));
        assert!(matches!(StepGraphs::new(true, Device::Cuda(1), true), StepGraphs::Pending { device: 1, check: false }));
    }
}
