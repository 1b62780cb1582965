//! A small CNN classifier: two conv-conv-pool stages, a 4x4 adaptive pool and an MLP head. It is
//! the judge of class-conditional samples (is this sample the class it was asked for?), trained
//! on the real training split.

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierConfig {
    pub in_channels: i64,
    pub image_size: i64,
    pub num_classes: i64,
    /// Channels of the first stage (the second has twice as many).
    pub width: i64,
    pub dropout: f64,
}

#[derive(Debug)]
pub struct Classifier {
    convs: Vec<nn::Conv2D>,
    fc1: nn::Linear,
    fc2: nn::Linear,
    dropout: f64,
}

impl Classifier {
    pub fn new(p: &nn::Path, c: &ClassifierConfig) -> Classifier {
        let conv = |name: &str, i: i64, o: i64| nn::conv2d(p / name, i, o, 3, nn::ConvConfig { padding: 1, ..Default::default() });
        let w = c.width;
        Classifier {
            convs: vec![conv("conv1", c.in_channels, w), conv("conv2", w, w), conv("conv3", w, 2 * w), conv("conv4", 2 * w, 2 * w)],
            fc1: nn::linear(p / "fc1", 2 * w * 16, 128, Default::default()),
            fc2: nn::linear(p / "fc2", 128, c.num_classes, Default::default()),
            dropout: c.dropout,
        }
    }

    /// Class logits for images in [-1, 1].
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = x.shallow_clone();
        for (i, conv) in self.convs.iter().enumerate() {
            h = h.apply(conv).relu();
            if i % 2 == 1 {
                h = h.max_pool2d_default(2);
            }
        }
        h.adaptive_avg_pool2d([4, 4]).flatten(1, -1).apply(&self.fc1).relu().dropout(self.dropout, train).apply(&self.fc2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logits_have_one_column_per_class() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let cfg = ClassifierConfig { in_channels: 1, image_size: 20, num_classes: 10, width: 8, dropout: 0.0 };
        let net = Classifier::new(&vs.root(), &cfg);
        let y = net.forward(&Tensor::zeros([3, 1, 20, 20], (tch::Kind::Float, tch::Device::Cpu)), false);
        assert_eq!(y.size(), vec![3, 10]);
    }
}
