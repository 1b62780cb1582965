//! A diffusion model in memory: the family's denoising network twice (the trained weights and
//! their exponential moving average), its noise schedule, its codec, and the run config it was
//! built from. Whatever the family, the rest of difforge uses this type.

use crate::codec::Codec;
use crate::error::ModelError;
use crate::family::{family_of, Condition, Family};
use difforge_config::{ModelConfig, Precision, RunConfig};
use difforge_core::{derive_seed, Stream};
use difforge_diffusion::{Denoiser, ForwardProcess, NoiseSchedule};
use difforge_nn::{Conditioning, DenoiserNet, LoraSpec};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Which of a model's two sets of weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weights {
    /// The weights the optimiser updates.
    Raw,
    /// Their exponential moving average (what sampling uses by default).
    Ema,
}

impl Weights {
    pub fn ema(use_ema: bool) -> Weights {
        if use_ema {
            Weights::Ema
        } else {
            Weights::Raw
        }
    }
}

pub struct DiffusionModel {
    config: RunConfig,
    family: Box<dyn Family>,
    device: Device,
    vs: VarStore,
    net: Box<dyn DenoiserNet>,
    ema_vs: VarStore,
    ema: Box<dyn DenoiserNet>,
    schedule: NoiseSchedule,
    codec: Box<dyn Codec>,
}

/// Sorted (name, tensor) pairs of a VarStore: the stable order optimiser and EMA rely on.
pub fn sorted_variables(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Makes the EMA copy of every frozen variable (what `trains` does not claim) use the raw
/// variable's storage: frozen weights never change, so their average is themselves, and a LoRA
/// fine-tune of a large base then holds the base once instead of twice.
fn share_frozen(vs: &VarStore, ema_vs: &VarStore, trains: impl Fn(&str) -> bool) {
    let raw = vs.variables();
    for (name, mut ema) in ema_vs.variables() {
        if let Some(var) = raw.get(&name).filter(|_| !trains(&name)) {
            tch::no_grad(|| ema.set_data(var));
        }
    }
}

/// `x` (N, C, H, W) with NHWC strides (PyTorch's `x.contiguous(memory_format=torch.channels_last)`;
/// tch has no memory formats): convolutions given such an input return the same layout.
fn channels_last(x: &Tensor) -> Tensor {
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

impl DiffusionModel {
    /// A freshly initialised model; the initial weights depend only on the seed.
    pub fn new(config: &RunConfig, device: Device) -> Result<DiffusionModel, ModelError> {
        DiffusionModel::with_lora_scale(config, device, 1.0)
    }

    /// A model whose LoRA adapters (if the config has `[lora]`) act at `scale`. Built and
    /// initialised on the CPU, then moved to `device`: the CPU generator draws the initial
    /// weights, so that a GPU run starts from the weights a CPU run with the same seed starts
    /// from (the CUDA generator would draw others).
    pub fn with_lora_scale(config: &RunConfig, device: Device, scale: f64) -> Result<DiffusionModel, ModelError> {
        // A single-file Stable Diffusion base is converted (once; then cached) before the seed
        // is set: the conversion builds networks, whose initialisation draws from libtorch's
        // generator, and would leave other draws to the adapters of the run that converted it.
        if let ModelConfig::StableDiffusion(sd) = &config.model {
            if sd.new.is_none() {
                crate::stable_diffusion::single_file_base::base_folder(sd)?;
            }
        }
        tch::manual_seed(derive_seed(config.seed, Stream::Init, 0) as i64 >> 1);
        let family = family_of(config, device)?;
        let spec = config.lora.clone().map(|c| LoraSpec { config: c, scale });
        let mut vs = VarStore::new(Device::Cpu);
        let net = family.build_network(&vs.root(), spec.as_ref())?;
        family.init_network(&vs)?;
        let mut ema_vs = VarStore::new(Device::Cpu);
        let ema = family.build_network(&ema_vs.root(), spec.as_ref())?;
        ema_vs.copy(&vs)?;
        crate::device::move_var_store(&mut vs, device)?;
        crate::device::move_var_store(&mut ema_vs, device)?;
        ema_vs.freeze();
        if let Some(lora) = &config.lora {
            share_frozen(&vs, &ema_vs, |name| family.adapter_carries(lora, name));
        }
        let codec = family.codec();
        Ok(DiffusionModel { config: config.clone(), family, device, vs, net, ema_vs, ema, schedule: NoiseSchedule::from_config(&config.diffusion), codec })
    }

    /// A model that only generates (a published folder served as it is): its EMA weights are
    /// its weights, held once.
    pub fn for_generation(config: &RunConfig, device: Device) -> Result<DiffusionModel, ModelError> {
        let model = DiffusionModel::new(config, device)?;
        share_frozen(&model.vs, &model.ema_vs, |_| false);
        Ok(model)
    }

    pub fn config(&self) -> &RunConfig {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn family(&self) -> &dyn Family {
        self.family.as_ref()
    }

    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    pub fn codec(&self) -> &dyn Codec {
        self.codec.as_ref()
    }

    /// The run's forward process (schedule, prediction type, loss weighting).
    pub fn forward_process(&self) -> ForwardProcess<'_> {
        let d = &self.config.diffusion;
        ForwardProcess { schedule: &self.schedule, prediction: d.prediction, min_snr_gamma: d.min_snr_gamma }
    }

    /// The shape (C, H, W) the network works in (the codec's space).
    pub fn latent_shape(&self) -> [i64; 3] {
        self.codec.latent_shape(self.family.pixel_shape())
    }

    pub fn network(&self, w: Weights) -> &dyn DenoiserNet {
        match w {
            Weights::Raw => self.net.as_ref(),
            Weights::Ema => self.ema.as_ref(),
        }
    }

    pub fn var_store(&self, w: Weights) -> &VarStore {
        match w {
            Weights::Raw => &self.vs,
            Weights::Ema => &self.ema_vs,
        }
    }

    pub fn var_store_mut(&mut self, w: Weights) -> &mut VarStore {
        match w {
            Weights::Raw => &mut self.vs,
            Weights::Ema => &mut self.ema_vs,
        }
    }

    /// Every variable of one set of weights, sorted by name.
    pub fn variables(&self, w: Weights) -> Vec<(String, Tensor)> {
        sorted_variables(self.var_store(w))
    }

    /// The variables a checkpoint holds: with `[lora]` on a family that starts from published
    /// weights (Stable Diffusion), only the adapters (the base is read again from `model.base`,
    /// so a checkpoint of an SD 1.5 LoRA run is megabytes, not gigabytes); else all of them.
    pub fn checkpointed_variables(&self, w: Weights) -> Vec<(String, Tensor)> {
        let vars = self.variables(w);
        match (&self.config.lora, self.family.base_folder()) {
            (Some(lora), Some(_)) => vars.into_iter().filter(|(n, _)| self.family.adapter_carries(lora, n)).collect(),
            _ => vars,
        }
    }

    /// The variables that train: only what the adapter carries with `[lora]`, else all (sorted
    /// by name), and their EMA twins. The others are frozen (no gradient).
    pub fn trainable(&self) -> (Vec<(String, Tensor)>, Vec<Tensor>) {
        let lora = self.config.lora.as_ref();
        let keep = |n: &str| lora.is_none_or(|l| self.family.adapter_carries(l, n));
        let mut params = Vec::new();
        for (name, t) in self.variables(Weights::Raw) {
            if keep(&name) {
                params.push((name, t));
            } else {
                let _ = t.set_requires_grad(false);
            }
        }
        let ema = self.variables(Weights::Ema).into_iter().filter(|(n, _)| keep(n)).map(|(_, t)| t).collect();
        (params, ema)
    }

    pub fn parameter_count(&self) -> i64 {
        difforge_nn::weights::parameter_count(&self.vs)
    }

    /// Whether the network runs under bfloat16 autocast (`train.precision = "bf16"`, CPU or CUDA).
    pub fn autocast(&self) -> bool {
        self.config.train.precision == Precision::Bf16
    }

    /// `f` under the run's autocast. Entering autocast only fails if libtorch refuses its own
    /// state; the network then runs in float32, said once in the log.
    fn autocast_scope<T>(&self, f: impl FnOnce() -> T) -> T {
        let _guard = difforge_native::AutocastBf16::enter(self.device, self.autocast())
            .map_err(|e| {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| tracing::warn!("bf16 autocast could not be entered ({e}); the network runs in float32"));
            })
            .ok();
        f()
    }

    /// The network's prediction (under autocast when configured; on channels_last images when
    /// `train.channels_last`) as float32.
    pub fn predict(&self, w: Weights, x: &Tensor, t: &Tensor, cond: &Conditioning, train: bool) -> Tensor {
        let x = if self.config.train.channels_last && x.dim() == 4 { channels_last(x) } else { x.shallow_clone() };
        self.autocast_scope(|| self.network(w).forward(&x, t, cond, train)).to_kind(Kind::Float)
    }

    /// `cond` prepared for many predictions in a row (see `DenoiserNet::prepare`).
    pub fn prepare(&self, w: Weights, cond: &Conditioning) -> Option<Conditioning> {
        self.autocast_scope(|| self.network(w).prepare(cond))
    }

    /// The network that sampling uses.
    pub fn denoiser(&self, w: Weights) -> ModelDenoiser<'_> {
        ModelDenoiser { model: self, weights: w }
    }

    /// The network conditioning (and its null counterpart) for one condition per image.
    pub fn encode(&self, conditions: &[Condition]) -> Result<(Conditioning, Option<Conditioning>), ModelError> {
        self.family.encode(conditions, self.device)
    }

    /// A checksum of the raw weights (sum of |w| over all, in f64): two runs that agree here to
    /// the last bit almost surely have identical weights.
    pub fn checksum(&self) -> f64 {
        tch::no_grad(|| self.variables(Weights::Raw).iter().map(|(_, t)| t.abs().sum(Kind::Double).double_value(&[])).sum())
    }
}

/// One of a model's networks as the sampling loop sees it.
pub struct ModelDenoiser<'a> {
    model: &'a DiffusionModel,
    weights: Weights,
}

impl Denoiser for ModelDenoiser<'_> {
    fn predict(&self, x: &Tensor, t: &Tensor, cond: &Conditioning) -> Tensor {
        self.model.predict(self.weights, x, t, cond, false)
    }

    fn prepare(&self, cond: &Conditioning) -> Option<Conditioning> {
        self.model.prepare(self.weights, cond)
    }
}
