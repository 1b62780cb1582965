//! Where a VAE run stands: enough to continue exactly (with the weights and the optimiser state
//! of the same checkpoint).

use crate::error::TrainError;
use difforge_model::checkpoint::STATE_FILE;
use difforge_model::ModelError;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VaeState {
    /// Training steps completed (the next step to run).
    pub step: u64,
    /// Optimiser updates applied (fewer than `step` when steps were skipped).
    pub optimizer_steps: u64,
    pub images_seen: u64,
    pub elapsed_s: f64,
    pub last_loss: f64,
    pub skipped_steps: u64,
    /// The best validation so far (the weights of `checkpoints/best`).
    pub best: Option<VaeBest>,
    /// Validations since the best one.
    pub validations_without_improvement: u32,
    /// Discriminator updates applied (only written when `vae.discriminator_weight` > 0, so a
    /// run without the discriminator writes the state it always did).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub discriminator_steps: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The best validation: its step, reconstruction loss, PSNR (dB) and SSIM.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VaeBest {
    pub step: u64,
    pub val_loss: f64,
    pub psnr: f64,
    pub ssim: f64,
}

/// The state of the checkpoint in `dir`.
pub fn read(dir: &Path) -> Result<VaeState, TrainError> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
    serde_json::from_slice(&text).map_err(|e| ModelError::checkpoint(&path, format!("not the state of a VAE run: {e}")).into())
}
