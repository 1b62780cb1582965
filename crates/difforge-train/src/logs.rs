//! The run's records: metrics.jsonl (steps and events), validation.jsonl and eval.jsonl, one JSON
//! object per line, and with `train.log` naming "tensorboard" the same numbers (and the sample
//! grids) in TensorBoard event files. A resumed run first drops the records of steps it will redo.

use crate::error::TrainError;
use crate::metrics::{truncate_after_step, JsonLines};
use crate::tensorboard::EventWriter;
use serde::Serialize;
use std::path::Path;

#[derive(Serialize)]
pub struct StepRecord {
    pub step: u64,
    pub loss: f64,
    /// Prior preservation (DreamBooth): the instance images' part of `loss` and the prior
    /// images' own loss (weighted by `finetune.prior_weight` in `loss`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_instance: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_prior: Option<f64>,
    pub lr: f64,
    pub grad_norm: f64,
    pub images_per_s: f64,
    pub elapsed_s: f64,
}

#[derive(Serialize)]
pub struct ValidationRecord<'a> {
    pub step: u64,
    pub val_loss: f64,
    pub val_loss_ema: f64,
    pub bands: &'a [f64],
    pub bands_ema: &'a [f64],
    pub pairs: usize,
    pub improved: bool,
}

#[derive(Serialize)]
pub struct EventRecord<'a> {
    pub step: u64,
    pub event: &'a str,
    pub detail: String,
}

/// The open record files; all None for the ranks of a data-parallel run other than rank 0,
/// which write nothing.
pub struct RunLogs {
    metrics: Option<JsonLines>,
    validation: Option<JsonLines>,
    eval: Option<JsonLines>,
    tensorboard: Option<EventWriter>,
}

fn write<T: Serialize>(log: &mut Option<JsonLines>, record: &T) -> Result<(), TrainError> {
    match log {
        Some(log) => log.write(record).map_err(|e| TrainError::io(log.path(), e)),
        None => Ok(()),
    }
}

impl RunLogs {
    /// Opens the logs of `run_dir` for appending, after dropping records past `step`; with
    /// `tensorboard`, a new event file too.
    pub fn open(run_dir: &Path, step: u64, tensorboard: bool) -> Result<RunLogs, TrainError> {
        let open = |name: &str| -> Result<JsonLines, TrainError> {
            let path = run_dir.join(name);
            truncate_after_step(&path, step).map_err(|e| TrainError::io(&path, e))?;
            JsonLines::append(&path).map_err(|e| TrainError::io(&path, e))
        };
        let tensorboard = if tensorboard { Some(EventWriter::create(run_dir, step).map_err(|e| TrainError::io(run_dir, e))?) } else { None };
        Ok(RunLogs { metrics: Some(open("metrics.jsonl")?), validation: Some(open("validation.jsonl")?), eval: Some(open("eval.jsonl")?), tensorboard })
    }

    /// Records that go nowhere (a data-parallel rank other than 0).
    pub fn silent() -> RunLogs {
        RunLogs { metrics: None, validation: None, eval: None, tensorboard: None }
    }

    fn scalars(&mut self, step: u64, scalars: &[(&str, f64)]) -> Result<(), TrainError> {
        match self.tensorboard.as_mut() {
            Some(tb) => tb.scalars(step, scalars).map_err(|e| TrainError::io(tb.path(), e)),
            None => Ok(()),
        }
    }

    pub fn step(&mut self, r: &StepRecord) -> Result<(), TrainError> {
        write(&mut self.metrics, r)?;
        self.scalars(r.step, &[("train/loss", r.loss), ("train/lr", r.lr), ("train/grad_norm", r.grad_norm), ("train/images_per_s", r.images_per_s)])
    }

    /// A sample grid written at `step` (TensorBoard only; the PNG itself is in samples/).
    pub fn samples(&mut self, step: u64, png: &Path) -> Result<(), TrainError> {
        let Some(tb) = self.tensorboard.as_mut() else { return Ok(()) };
        let bytes = std::fs::read(png).map_err(|e| TrainError::io(png, e))?;
        tb.png(step, "samples", &bytes).map_err(|e| TrainError::io(tb.path(), e))
    }

    pub fn event(&mut self, record: &EventRecord) -> Result<(), TrainError> {
        write(&mut self.metrics, record)
    }

    pub fn validation(&mut self, r: &ValidationRecord) -> Result<(), TrainError> {
        write(&mut self.validation, r)?;
        let bands: Vec<(String, f64)> = r
            .bands
            .iter()
            .zip(r.bands_ema)
            .enumerate()
            .flat_map(|(b, (raw, ema))| [(format!("val_band/{b:02}"), *raw), (format!("val_band_ema/{b:02}"), *ema)])
            .collect();
        let mut scalars: Vec<(&str, f64)> = vec![("val/loss", r.val_loss), ("val/loss_ema", r.val_loss_ema)];
        scalars.extend(bands.iter().map(|(t, v)| (t.as_str(), *v)));
        self.scalars(r.step, &scalars)
    }

    /// One evaluation: the step, each metric and whether the watched one improved.
    pub fn evaluation(&mut self, step: u64, metrics: &[(String, f64)], improved: bool) -> Result<(), TrainError> {
        let mut rec = serde_json::Map::new();
        rec.insert("step".into(), step.into());
        for (name, v) in metrics {
            rec.insert(name.clone(), serde_json::json!(v));
        }
        rec.insert("improved".into(), improved.into());
        write(&mut self.eval, &rec)?;
        let tags: Vec<(String, f64)> = metrics.iter().map(|(n, v)| (format!("eval/{n}"), *v)).collect();
        self.scalars(step, &tags.iter().map(|(t, v)| (t.as_str(), *v)).collect::<Vec<_>>())
    }
}
