//! One optimiser step, the same for training and for `difforge bench`: zero the gradients, run
//! forward and backward over the step's micro-batches (plus the prior-preservation batches of a
//! fine-tune), skip the update when the loss or gradient is not finite, else clip the global
//! gradient norm, apply AdamW and update the EMA weights.

use crate::ema;
use crate::loss::MicroBatch;
use difforge_config::TrainConfig;
use difforge_core::{derive_seed, Stream};
use difforge_data::Batch;
use difforge_model::DiffusionModel;
use difforge_nn::AdamW;
use tch::Tensor;

/// What one step did.
#[derive(Debug, Clone, Copy)]
pub struct StepOutcome {
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    /// False when the step was skipped (non-finite loss or gradient; nothing was updated).
    pub applied: bool,
}

/// The model with its optimiser and the EMA twins of the trained variables.
pub struct Stepper {
    pub model: DiffusionModel,
    pub opt: AdamW,
    pub ema_params: Vec<Tensor>,
}

/// Where a step's data comes from: the micro-batch of each draw index, and optionally a second
/// batch per draw (prior preservation) whose loss counts with a weight.
pub struct StepData<'a> {
    pub batch: &'a mut dyn FnMut(u64) -> Batch,
    pub prior: Option<(&'a mut dyn FnMut(u64) -> Batch, f64)>,
    /// Replace this step's loss by NaN (fault-injection for tests).
    pub inject_nan: bool,
}

/// Draw indices of prior batches live apart from those of the training batches.
const PRIOR_DRAWS: u64 = 1 << 62;

impl Stepper {
    /// Runs step `step` at learning rate `lr`.
    pub fn step(&mut self, t: &TrainConfig, step: u64, lr: f64, data: StepData) -> StepOutcome {
        let seed = self.model.config().seed;
        // Dropout is the one draw from libtorch's generator: seed it from the step.
        tch::manual_seed((derive_seed(seed, Stream::Dropout, step) >> 1) as i64);
        self.opt.zero_grad();
        let StepData { batch, mut prior, inject_nan } = data;
        let mut loss_sum = 0.0;
        for micro in 0..t.grad_accum as u64 {
            let draw = step * t.grad_accum as u64 + micro;
            let mut loss = MicroBatch::new(&self.model, &batch(draw), draw).loss(&self.model) / t.grad_accum as f64;
            if let Some((prior_batch, weight)) = prior.as_mut() {
                let pb = prior_batch(draw);
                loss += MicroBatch::new(&self.model, &pb, draw | PRIOR_DRAWS).loss(&self.model) * (*weight / t.grad_accum as f64);
            }
            if inject_nan {
                loss *= f64::NAN;
            }
            loss.backward();
            loss_sum += loss.double_value(&[]);
        }
        let grad_norm = self.opt.grad_norm();
        let applied = loss_sum.is_finite() && grad_norm.is_finite();
        if applied {
            if t.grad_clip > 0.0 && grad_norm > t.grad_clip {
                self.opt.scale_grads(t.grad_clip / (grad_norm + 1e-6));
            }
            self.opt.step(lr);
            ema::update(&self.ema_params, self.opt.params(), ema::ema_decay(t.ema_decay, self.opt.steps));
        }
        StepOutcome { loss: loss_sum, grad_norm, lr, applied }
    }
}
