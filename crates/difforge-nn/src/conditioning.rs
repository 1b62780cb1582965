//! What a denoising network is conditioned on besides the noisy input and the timestep: nothing,
//! a class index per sample, or a text encoder's output. Guidance concatenates a batch's
//! conditioning with its null counterpart, so every kind can be joined and split along the batch.

use tch::{Device, Tensor};

#[derive(Debug)]
pub enum Conditioning {
    /// An unconditional network.
    None,
    /// One class index per sample (B,), int64; the network's null class means "no class".
    Class(Tensor),
    /// A text encoder's output for each sample.
    Text(TextConditioning),
    /// Token ids (B, L), int64, for a network that encodes the text itself (a text encoder
    /// trained together with the denoiser).
    Tokens(Tensor),
}

/// A text encoder's output, as UNet2DConditionModel takes it.
#[derive(Debug)]
pub struct TextConditioning {
    /// (B, L, D) token embeddings the network cross-attends to.
    pub hidden: Tensor,
    /// (B, L): 1 for tokens to attend to, 0 for padding (None: attend to all).
    pub mask: Option<Tensor>,
    /// (B, P) pooled embedding (SDXL's text_time conditioning).
    pub pooled: Option<Tensor>,
    /// (B, 6) SDXL's original size, crop and target size ids.
    pub time_ids: Option<Tensor>,
}

fn map_opt(t: &Option<Tensor>, f: impl Fn(&Tensor) -> Tensor) -> Option<Tensor> {
    t.as_ref().map(f)
}

fn cat_opt(parts: &[&Option<Tensor>]) -> Option<Tensor> {
    let tensors: Option<Vec<&Tensor>> = parts.iter().map(|p| p.as_ref()).collect();
    tensors.map(|t| Tensor::cat(&t, 0))
}

impl TextConditioning {
    fn map(&self, f: impl Fn(&Tensor) -> Tensor) -> TextConditioning {
        TextConditioning { hidden: f(&self.hidden), mask: map_opt(&self.mask, &f), pooled: map_opt(&self.pooled, &f), time_ids: map_opt(&self.time_ids, &f) }
    }
}

impl Conditioning {
    /// Samples in the batch (None for `Conditioning::None`, which fits any batch).
    pub fn batch_size(&self) -> Option<i64> {
        match self {
            Conditioning::None => None,
            Conditioning::Class(c) => Some(c.size()[0]),
            Conditioning::Text(t) => Some(t.hidden.size()[0]),
            Conditioning::Tokens(ids) => Some(ids.size()[0]),
        }
    }

    /// The class indices, for class-conditional networks.
    pub fn class(&self) -> Option<&Tensor> {
        match self {
            Conditioning::Class(c) => Some(c),
            _ => None,
        }
    }

    fn map(&self, f: impl Fn(&Tensor) -> Tensor) -> Conditioning {
        match self {
            Conditioning::None => Conditioning::None,
            Conditioning::Class(c) => Conditioning::Class(f(c)),
            Conditioning::Text(t) => Conditioning::Text(t.map(f)),
            Conditioning::Tokens(ids) => Conditioning::Tokens(f(ids)),
        }
    }

    /// Every tensor it holds, in a fixed order (what a CUDA graph copies into its static inputs;
    /// two conditionings of one kind and shape list tensors of the same shapes in the same order).
    pub fn tensors(&self) -> Vec<&Tensor> {
        match self {
            Conditioning::None => Vec::new(),
            Conditioning::Class(c) => vec![c],
            Conditioning::Tokens(ids) => vec![ids],
            Conditioning::Text(t) => {
                let optional = [&t.mask, &t.pooled, &t.time_ids];
                std::iter::once(&t.hidden).chain(optional.into_iter().flatten()).collect()
            }
        }
    }

    /// A copy with tensors of its own.
    pub fn copy(&self) -> Conditioning {
        self.map(Tensor::copy)
    }

    pub fn shallow_clone(&self) -> Conditioning {
        self.map(Tensor::shallow_clone)
    }

    pub fn to_device(&self, device: Device) -> Conditioning {
        self.map(|t| t.to_device(device))
    }

    /// Samples `start .. start + len` of the batch.
    pub fn narrow(&self, start: i64, len: i64) -> Conditioning {
        self.map(|t| t.narrow(0, start, len))
    }

    /// The batches one after the other. All parts must be of the same kind: guidance joins a
    /// batch with its own null counterpart, which the model family builds alike.
    pub fn cat(parts: &[&Conditioning]) -> Conditioning {
        match parts.first() {
            None | Some(Conditioning::None) => Conditioning::None,
            Some(Conditioning::Class(_)) => {
                let classes: Vec<&Tensor> = parts.iter().filter_map(|p| p.class()).collect();
                assert_eq!(classes.len(), parts.len(), "conditioning of different kinds cannot be joined");
                Conditioning::Class(Tensor::cat(&classes, 0))
            }
            Some(Conditioning::Tokens(_)) => {
                let ids: Vec<&Tensor> = parts
                    .iter()
                    .filter_map(|p| match p {
                        Conditioning::Tokens(ids) => Some(ids),
                        _ => None,
                    })
                    .collect();
                assert_eq!(ids.len(), parts.len(), "conditioning of different kinds cannot be joined");
                Conditioning::Tokens(Tensor::cat(&ids, 0))
            }
            Some(Conditioning::Text(_)) => {
                let texts: Vec<&TextConditioning> = parts
                    .iter()
                    .filter_map(|p| match p {
                        Conditioning::Text(t) => Some(t),
                        _ => None,
                    })
                    .collect();
                assert_eq!(texts.len(), parts.len(), "conditioning of different kinds cannot be joined");
                let hidden: Vec<&Tensor> = texts.iter().map(|t| &t.hidden).collect();
                Conditioning::Text(TextConditioning {
                    hidden: Tensor::cat(&hidden, 0),
                    mask: cat_opt(&texts.iter().map(|t| &t.mask).collect::<Vec<_>>()),
                    pooled: cat_opt(&texts.iter().map(|t| &t.pooled).collect::<Vec<_>>()),
                    time_ids: cat_opt(&texts.iter().map(|t| &t.time_ids).collect::<Vec<_>>()),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn joins_and_splits_along_the_batch() {
        let a = Conditioning::Class(Tensor::from_slice(&[1i64, 2]));
        let b = Conditioning::Class(Tensor::from_slice(&[10i64, 10]));
        let both = Conditioning::cat(&[&a, &b]);
        assert_eq!(both.batch_size(), Some(4));
        assert_eq!(Vec::<i64>::try_from(both.narrow(1, 2).class().unwrap()).unwrap(), vec![2, 10]);
        let text = |n: i64| {
            Conditioning::Text(TextConditioning {
                hidden: Tensor::zeros([n, 3, 4], (Kind::Float, Device::Cpu)),
                mask: None,
                pooled: Some(Tensor::ones([n, 5], (Kind::Float, Device::Cpu))),
                time_ids: None,
            })
        };
        let joined = Conditioning::cat(&[&text(2), &text(3)]);
        match joined {
            Conditioning::Text(t) => {
                assert_eq!(t.hidden.size(), vec![5, 3, 4]);
                assert_eq!(t.pooled.map(|p| p.size()), Some(vec![5, 5]));
                assert!(t.mask.is_none());
            }
            other => panic!("{other:?}"),
        }
        assert!(Conditioning::cat(&[&Conditioning::None, &Conditioning::None]).batch_size().is_none());
    }
}
