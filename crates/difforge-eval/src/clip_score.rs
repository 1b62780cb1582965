//! CLIP score of a text model's samples against their prompts (torchmetrics' `CLIPScore`:
//! the mean of 100 * cos(image, prompt) over the set, clamped at 0), with a CLIP model folder
//! the user has, and the same score of the real images against their own captions: the score
//! the model would get for drawing its data exactly, which the samples' is read against.

use crate::error::EvalError;
use difforge_nn::sd::clip_model::ClipModel;
use serde::Serialize;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Images per pass through CLIP's image tower.
const BATCH: i64 = 32;

#[derive(Debug, Clone, Serialize)]
pub struct ClipScoreReport {
    /// The CLIP model folder's name.
    pub model: String,
    /// The samples against the prompts they were generated from.
    pub samples: f64,
    /// The real images against their own captions.
    pub real: f64,
}

/// Scores `samples` (sample i drawn from prompt i modulo their number) and the real images
/// against their captions with the CLIP model in `dir`.
pub fn clip_scores(dir: &Path, samples: &Tensor, prompts: &[String], real: &Tensor, captions: &[String], device: Device) -> Result<ClipScoreReport, EvalError> {
    let clip = ClipModel::load(dir, device)?;
    let model = dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
    Ok(ClipScoreReport { model, samples: set_score(&clip, samples, prompts, device)?, real: set_score(&clip, real, captions, device)? })
}

/// torchmetrics' CLIPScore of a set: max(mean(100 * cos), 0), image i against text i modulo
/// the texts' number.
fn set_score(clip: &ClipModel, images: &Tensor, texts: &[String], device: Device) -> Result<f64, EvalError> {
    let n = images.size()[0];
    if n == 0 || texts.is_empty() {
        return Err(EvalError::Input("CLIP score: no images or no prompts to score".into()));
    }
    let mut sum = 0.0;
    for start in (0..n).step_by(BATCH as usize) {
        let len = BATCH.min(n - start);
        let batch = images.narrow(0, start, len).to_device(device);
        let prompts: Vec<&str> = (start..start + len).map(|i| texts[i as usize % texts.len()].as_str()).collect();
        sum += clip.clip_score_raw(&batch, &prompts)?.sum(Kind::Double).double_value(&[]);
    }
    Ok((sum / n as f64).max(0.0))
}
