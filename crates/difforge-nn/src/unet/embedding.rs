//! The embedding every residual block receives: sinusoidal timestep features through an MLP,
//! plus a learnt class embedding with one extra row for the null class.

use crate::activation::Activation;
use crate::lora::{self, LoraSpec, LoraTarget};
use tch::{nn, Kind, Tensor};

/// Sinusoidal features of (possibly fractional) timesteps: [cos(t w_i), sin(t w_i)], with
/// frequencies w_i = 10000^(-i / half) as in DDPM/diffusers.
pub fn timestep_features(t: &Tensor, dim: i64) -> Tensor {
    let half = dim / 2;
    let freqs = (Tensor::arange(half, (Kind::Float, t.device())) * (-(10000f64.ln()) / half as f64)).exp();
    let args = t.to_kind(Kind::Float).unsqueeze(1) * freqs.unsqueeze(0);
    Tensor::cat(&[args.cos(), args.sin()], 1)
}

#[derive(Debug)]
pub struct TimeClassEmbedding {
    features: i64,
    linear_1: lora::Linear,
    linear_2: lora::Linear,
    class_embedding: Option<nn::Embedding>,
    activation: Activation,
}

impl TimeClassEmbedding {
    pub fn new(p: &nn::Path, features: i64, dim: i64, num_classes: i64, activation: Activation, lora: Option<&LoraSpec>) -> TimeClassEmbedding {
        let lora = lora.filter(|l| l.wants(LoraTarget::Embedding));
        let class_embedding = (num_classes > 0).then(|| nn::embedding(p / "class_embedding", num_classes + 1, dim, Default::default()));
        TimeClassEmbedding {
            features,
            linear_1: lora::Linear::new(p / "time_embedding" / "linear_1", features, dim, Default::default(), lora),
            linear_2: lora::Linear::new(p / "time_embedding" / "linear_2", dim, dim, Default::default(), lora),
            class_embedding,
            activation,
        }
    }

    /// The embedding added to every residual block: time MLP + class row.
    pub fn forward(&self, t: &Tensor, class: Option<&Tensor>) -> Tensor {
        let f = timestep_features(t, self.features);
        let emb = self.linear_2.forward(&self.activation.apply(&self.linear_1.forward(&f, false)), false);
        match (&self.class_embedding, class) {
            (Some(table), Some(c)) => emb + c.apply(table),
            _ => emb,
        }
    }
}
