//! A diffusion model in memory: the trained UNet, its EMA twin, and the noise schedule.

use crate::config::{Precision, RunConfig};
use crate::error::TrainError;
use difforge_core::{derive_seed, Stream};
use difforge_diffusion::{Denoiser, NoiseSchedule};
use difforge_nn::UNet;
use tch::nn::VarStore;
use tch::{Device, Tensor};

pub struct DiffusionModel {
    pub config: RunConfig,
    pub device: Device,
    pub vs: VarStore,
    pub unet: UNet,
    pub ema_vs: VarStore,
    pub ema: UNet,
    pub schedule: NoiseSchedule,
}

/// Sorted (name, tensor) pairs of a VarStore: the stable order optimiser and EMA rely on.
pub fn sorted_variables(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

impl DiffusionModel {
    /// A freshly initialised model; the initial weights depend only on the seed.
    pub fn new(config: &RunConfig, device: Device) -> Result<DiffusionModel, TrainError> {
        DiffusionModel::with_lora_scale(config, device, 1.0)
    }

    /// A model whose LoRA adapters (if the config has `[lora]`) act at `scale`.
    pub fn with_lora_scale(config: &RunConfig, device: Device, scale: f64) -> Result<DiffusionModel, TrainError> {
        tch::manual_seed(derive_seed(config.seed, Stream::Init, 0) as i64 >> 1);
        let spec = config.lora.clone().map(|c| difforge_nn::LoraSpec { config: c, scale });
        let vs = VarStore::new(device);
        let unet = UNet::with_lora(&vs.root(), &config.model, spec.as_ref())?;
        let mut ema_vs = VarStore::new(device);
        let ema = UNet::with_lora(&ema_vs.root(), &config.model, spec.as_ref())?;
        ema_vs.copy(&vs)?;
        ema_vs.freeze();
        Ok(DiffusionModel { config: config.clone(), device, vs, unet, ema_vs, ema, schedule: NoiseSchedule::from_config(&config.diffusion) })
    }

    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        sorted_variables(&self.vs)
    }

    pub fn ema_parameters(&self) -> Vec<Tensor> {
        sorted_variables(&self.ema_vs).into_iter().map(|(_, t)| t).collect()
    }

    /// The variables that train: only the adapters with `[lora]`, else all. The others are
    /// frozen (no gradient).
    pub fn trainable(&self) -> (Vec<(String, Tensor)>, Vec<Tensor>) {
        let lora = self.config.lora.clone();
        let keep = |n: &str| lora.as_ref().is_none_or(|l| l.carries(n));
        let mut params = Vec::new();
        for (name, t) in self.parameters() {
            if keep(&name) {
                params.push((name, t));
            } else {
                let _ = t.set_requires_grad(false);
            }
        }
        let ema = sorted_variables(&self.ema_vs).into_iter().filter(|(n, _)| keep(n)).map(|(_, t)| t).collect();
        (params, ema)
    }

    pub fn parameter_count(&self) -> i64 {
        difforge_nn::weights::parameter_count(&self.vs)
    }

    /// bf16 autocast applies on CUDA only.
    pub fn autocast(&self) -> bool {
        self.device.is_cuda() && self.config.train.precision == Precision::Bf16
    }

    /// The network that sampling uses: the EMA weights by default.
    pub fn denoiser(&self, use_ema: bool) -> UNetDenoiser<'_> {
        UNetDenoiser { unet: if use_ema { &self.ema } else { &self.unet }, autocast: self.autocast() }
    }

    /// A checksum of the raw weights (sum of |w| over all, in f64): two runs that agree here to
    /// the last bit almost surely have identical weights.
    pub fn checksum(&self) -> f64 {
        tch::no_grad(|| self.parameters().iter().map(|(_, t)| t.abs().sum(tch::Kind::Double).double_value(&[])).sum())
    }
}

pub struct UNetDenoiser<'a> {
    unet: &'a UNet,
    autocast: bool,
}

impl Denoiser for UNetDenoiser<'_> {
    fn predict(&self, x: &Tensor, t: &Tensor, class: Option<&Tensor>) -> Tensor {
        tch::autocast(self.autocast, || self.unet.forward(x, t, class, false)).to_kind(tch::Kind::Float)
    }
}
