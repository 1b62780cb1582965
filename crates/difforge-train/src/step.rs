//! One optimiser step, the same for training and for `difforge bench`: zero the gradients, run
//! forward and backward over the step's micro-batches (plus the prior-preservation batches of a
//! fine-tune), average the gradients over the ranks of a data-parallel run, skip the update when
//! the loss or gradient is not finite, else clip the global gradient norm, apply AdamW and update
//! the EMA weights.

use crate::ema;
use crate::error::TrainError;
use crate::graph_step::StepGraphs;
use crate::loss::MicroBatch;
use crate::parallel::{DataParallel, Shard};
use difforge_config::TrainConfig;
use difforge_core::{derive_seed, Stream};
use difforge_data::Batch;
use difforge_model::DiffusionModel;
use difforge_nn::{AdamW, FlatBuffer};
use serde::Serialize;
use std::time::Instant;
use tch::Device;

/// Wall time spent in each phase of the steps run while [`Stepper::phases`] was on. The device
/// is synchronised at each phase boundary, which costs a little on CUDA and nothing on the CPU.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PhaseTimes {
    pub steps: u64,
    /// Batch assembly, noise and timestep draws, host-to-device copies.
    pub data_s: f64,
    /// The network's forward pass and the loss.
    pub forward_s: f64,
    pub backward_s: f64,
    /// Gradient norm, clipping and the AdamW update.
    pub optimizer_s: f64,
    pub ema_s: f64,
}

impl PhaseTimes {
    /// The mean of each phase over `steps` steps.
    pub fn per_step(&self) -> PhaseTimes {
        let n = self.steps.max(1) as f64;
        PhaseTimes {
            steps: self.steps,
            data_s: self.data_s / n,
            forward_s: self.forward_s / n,
            backward_s: self.backward_s / n,
            optimizer_s: self.optimizer_s / n,
            ema_s: self.ema_s / n,
        }
    }

    fn add(&mut self, o: &PhaseTimes) {
        self.steps += o.steps;
        self.data_s += o.data_s;
        self.forward_s += o.forward_s;
        self.backward_s += o.backward_s;
        self.optimizer_s += o.optimizer_s;
        self.ema_s += o.ema_s;
    }
}

/// Lap timer for [`PhaseTimes`]; free when off.
struct Laps {
    on: bool,
    device: Device,
    last: Instant,
}

impl Laps {
    /// Seconds since the previous lap (0 when off), after the device has finished its work.
    fn lap(&mut self) -> f64 {
        if !self.on {
            return 0.0;
        }
        if let Device::Cuda(n) = self.device {
            tch::Cuda::synchronize(n as i64);
        }
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        dt
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy)]
pub struct StepOutcome {
    pub loss: f64,
    /// Prior preservation: the prior images' own loss (unweighted, summed over the step's
    /// micro-batches as `loss` is; this rank's in a data-parallel run), part of `loss` at
    /// `finetune.prior_weight`.
    pub prior_loss: Option<f64>,
    pub grad_norm: f64,
    pub lr: f64,
    /// False when the step was skipped (non-finite loss or gradient; nothing was updated).
    pub applied: bool,
}

/// The model with its optimiser and the EMA twins of the trained variables (laid out like the
/// optimiser's parameter buffer).
pub struct Stepper {
    pub model: DiffusionModel,
    pub opt: AdamW,
    pub ema_params: FlatBuffer,
    /// Per-phase timing (`difforge bench --profile`); None in training.
    pub phases: Option<PhaseTimes>,
    /// The CUDA graph of the forward and backward pass (`train.cuda_graphs`).
    pub graphs: StepGraphs,
}

/// Where a step's data comes from: the micro-batch of each draw index, and optionally a second
/// batch per draw (prior preservation) whose loss counts with a weight.
/// The batch of a draw index.
pub type BatchOf<'a> = &'a mut dyn FnMut(u64) -> Result<Batch, TrainError>;

pub struct StepData<'a> {
    pub batch: BatchOf<'a>,
    /// True when `batch` gives this rank's own images (streamed shards) rather than the global
    /// batch whose rows the ranks share.
    pub rank_local: bool,
    pub prior: Option<(BatchOf<'a>, f64)>,
    /// Replace this step's loss by NaN (fault-injection for tests).
    pub inject_nan: bool,
    /// The process group of a data-parallel run: this rank trains on its rows of each batch and
    /// the gradients are averaged over the ranks. None: one process, the whole batch.
    pub parallel: Option<&'a DataParallel>,
}

/// Draw indices of prior batches live apart from those of the training batches.
const PRIOR_DRAWS: u64 = 1 << 62;

impl Stepper {
    /// Runs step `step` at learning rate `lr`.
    pub fn step(&mut self, t: &TrainConfig, step: u64, lr: f64, data: StepData) -> Result<StepOutcome, TrainError> {
        let seed = self.model.config().seed;
        let StepData { batch, rank_local, mut prior, inject_nan, parallel } = data;
        let shard = parallel.map_or(Shard::WHOLE, DataParallel::shard);
        // A rank's own images take all their rows and draws of their own.
        let (rows_of, draw_of) = if rank_local { (Shard::WHOLE, shard) } else { (shard, Shard::WHOLE) };
        // Dropout is the one draw from libtorch's generator: seed it from the step (and the rank,
        // so that ranks drop different units).
        tch::manual_seed((derive_seed(seed, Stream::Dropout, step * shard.count as u64 + shard.index as u64) >> 1) as i64);
        let mut laps = Laps { on: self.phases.is_some(), device: self.model.device(), last: Instant::now() };
        let mut ph = PhaseTimes { steps: 1, ..PhaseTimes::default() };
        self.opt.zero_grad();
        let mut loss_sum = 0.0;
        let mut prior_sum = prior.is_some().then_some(0.0);
        for micro in 0..t.grad_accum as u64 {
            let draw = step * t.grad_accum as u64 + micro;
            let micro_batch = |b: &Batch, draw: u64| {
                let draw = draw * draw_of.count as u64 + draw_of.index as u64;
                MicroBatch::rows(&self.model, b, draw, rows_of.rows(b.size))
            };
            let main = micro_batch(&batch(draw)?, draw);
            let extra = match prior.as_mut() {
                Some((prior_batch, weight)) => Some((micro_batch(&prior_batch(draw)?, draw | PRIOR_DRAWS), *weight)),
                None => None,
            };
            ph.data_s += laps.lap();
            let accum = t.grad_accum as f64;
            // The graph covers the plain case: one loss, nothing injected.
            let graphed = match (&extra, inject_nan) {
                (None, false) => self.graphs.forward_backward(&self.model, &mut self.opt, main, accum, micro == 0),
                _ => Err(main),
            };
            let loss = match graphed {
                Ok(loss) => {
                    // Forward and backward are one launch: the lap counts as forward.
                    ph.forward_s += laps.lap();
                    loss
                }
                Err(main) => {
                    let (loss, prior_loss) = eager_loss(&self.model, &main, extra.as_ref(), accum, inject_nan);
                    ph.forward_s += laps.lap();
                    loss.backward();
                    if let (Some(sum), Some(p)) = (prior_sum.as_mut(), prior_loss) {
                        *sum += p.double_value(&[]) / accum;
                    }
                    loss
                }
            };
            loss_sum += loss.double_value(&[]);
            ph.backward_s += laps.lap();
        }
        // Accumulated micro-batches are reduced once, after the last one.
        if let Some(p) = parallel {
            loss_sum = p.average_gradients(self.opt.grads().data(), loss_sum)?;
        }
        let grad_norm = self.opt.grad_norm();
        let applied = loss_sum.is_finite() && grad_norm.is_finite();
        if applied {
            if t.grad_clip > 0.0 && grad_norm > t.grad_clip {
                self.opt.scale_grads(t.grad_clip / (grad_norm + 1e-6));
            }
            self.opt.step(lr)?;
            ph.optimizer_s += laps.lap();
            ema::update(&self.ema_params, self.opt.params(), ema::ema_decay(t.ema_decay, self.opt.steps));
            ph.ema_s += laps.lap();
        }
        if let Some(total) = self.phases.as_mut() {
            total.add(&ph);
        }
        Ok(StepOutcome { loss: loss_sum, prior_loss: prior_sum, grad_norm, lr, applied })
    }
}

/// The loss of a micro-batch computed eagerly (forward only): its own, plus the prior batch's
/// at its weight, divided by the micro-batches per step; NaN when a fault is injected. Also the
/// prior batch's own (unweighted) loss, for the log.
fn eager_loss(
    model: &DiffusionModel,
    main: &MicroBatch,
    prior: Option<&(MicroBatch, f64)>,
    accum: f64,
    inject_nan: bool,
) -> (tch::Tensor, Option<tch::Tensor>) {
    let mut loss = main.loss(model) / accum;
    let mut prior_loss = None;
    if let Some((pb, weight)) = prior {
        let own = pb.loss(model);
        loss += &own * (weight / accum);
        prior_loss = Some(own.detach());
    }
    if inject_nan {
        loss *= f64::NAN;
    }
    (loss, prior_loss)
}
