//! Flat buffers: a list of tensors that live as views of one contiguous buffer, so that the
//! optimiser, gradient clipping and the EMA each touch one tensor per step instead of one per
//! parameter (a few kernels instead of hundreds; what PyTorch's foreach and fused optimisers buy).
//!
//! Adopting a tensor keeps its identity: the network's modules hold handles to the same
//! TensorImpl, which `set_data` repoints at a slice of the buffer, exactly like PyTorch's
//! `p.data = flat[offset:offset + n].view_as(p)`. Gradients are adopted the same way, after one
//! backward pass has made them exist; autograd then accumulates into them in place.

use crate::error::NnError;
use tch::{Kind, Tensor};

/// Slices start on 64-byte boundaries (16 float32) so that vectorised kernels see aligned data;
/// the gaps hold zeros and stay zero under AdamW, clipping and the EMA.
const ALIGN_ELEMENTS: i64 = 16;

/// Where one tensor lives in the buffer.
#[derive(Debug, Clone, PartialEq)]
struct Slot {
    offset: i64,
    shape: Vec<i64>,
}

impl Slot {
    fn numel(&self) -> i64 {
        self.shape.iter().product()
    }
}

/// One contiguous 1-D buffer and the tensors that are views of it.
pub struct FlatBuffer {
    data: Tensor,
    slots: Vec<Slot>,
}

impl FlatBuffer {
    /// Moves `tensors` (all of one dtype and device) into a new buffer; afterwards each is a
    /// view of it with its old values, shape and identity.
    pub fn adopt(tensors: &[Tensor]) -> Result<FlatBuffer, NnError> {
        let (slots, len) = layout(tensors)?;
        let (kind, device) = tensors.first().map_or((Kind::Float, tch::Device::Cpu), |t| (t.kind(), t.device()));
        let data = Tensor::zeros([len], (kind, device));
        let flat = FlatBuffer { data, slots };
        tch::no_grad(|| {
            for (t, mut view) in tensors.iter().zip(flat.views()) {
                view.copy_(t);
                let mut t = t.shallow_clone();
                t.set_data(&view);
            }
        });
        Ok(flat)
    }

    /// Makes the gradient of every tensor in `params` (leaves that require grad) a view of a new
    /// zeroed buffer, which is returned. Gradients that do not exist yet are created first by
    /// one backward pass through `sum(p) * 0`.
    pub fn adopt_grads(params: &[Tensor]) -> Result<FlatBuffer, NnError> {
        if params.iter().any(|p| !p.requires_grad()) {
            return Err(NnError::Invalid("flat gradients: every tensor must require grad".into()));
        }
        if params.iter().any(|p| !p.grad().defined()) {
            tch::with_grad(|| {
                let zero: Tensor = params.iter().map(|p| p.sum(Kind::Float) * 0.0).fold(Tensor::zeros([], (Kind::Float, params[0].device())), |a, b| a + b);
                zero.backward();
            });
        }
        let grads: Vec<Tensor> = params.iter().map(Tensor::grad).collect();
        let flat = FlatBuffer::adopt(&grads)?;
        let _ = flat.data.shallow_clone().zero_();
        Ok(flat)
    }

    /// A zero buffer with the same layout (for optimiser moments).
    pub fn zeros_like(&self) -> FlatBuffer {
        FlatBuffer { data: self.data.zeros_like(), slots: self.slots.clone() }
    }

    /// The whole buffer, gaps included (they hold zeros).
    pub fn data(&self) -> &Tensor {
        &self.data
    }

    /// A view of the buffer per adopted tensor, in adoption order.
    pub fn views(&self) -> Vec<Tensor> {
        self.slots.iter().map(|s| self.data.narrow(0, s.offset, s.numel()).view(s.shape.as_slice())).collect()
    }

    /// True when `other` places the same shapes at the same offsets.
    pub fn same_layout(&self, other: &FlatBuffer) -> bool {
        self.slots == other.slots && self.data.size() == other.data.size()
    }
}

/// The slot of each tensor and the buffer length.
fn layout(tensors: &[Tensor]) -> Result<(Vec<Slot>, i64), NnError> {
    let mut slots = Vec::with_capacity(tensors.len());
    let mut len = 0i64;
    for (i, t) in tensors.iter().enumerate() {
        let first = &tensors[0];
        if t.kind() != first.kind() || t.device() != first.device() {
            return Err(NnError::Invalid(format!(
                "flat buffer: tensor {i} is {:?} on {:?}, tensor 0 is {:?} on {:?}; one buffer holds one dtype on one device",
                t.kind(),
                t.device(),
                first.kind(),
                first.device()
            )));
        }
        slots.push(Slot { offset: len, shape: t.size() });
        let n = t.numel() as i64;
        len += (n as u64).div_ceil(ALIGN_ELEMENTS as u64) as i64 * ALIGN_ELEMENTS;
    }
    Ok((slots, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adopted_tensors_keep_values_and_identity_and_share_the_buffer() {
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).view([3, 1]).set_requires_grad(true);
        let b = Tensor::from_slice(&[4.0f32; 20]).set_requires_grad(true);
        let held = a.shallow_clone(); // what a module would hold
        let flat = FlatBuffer::adopt(&[a.shallow_clone(), b.shallow_clone()]).unwrap();
        assert_eq!(flat.data().size(), vec![16 + 32]);
        assert_eq!(held.size(), vec![3, 1]);
        assert_eq!(Vec::<f32>::try_from(held.view([-1])).unwrap(), vec![1.0, 2.0, 3.0]);
        tch::no_grad(|| {
            let _ = flat.data().shallow_clone().g_mul_scalar_(2.0);
        });
        assert_eq!(held.double_value(&[2, 0]), 6.0);
        assert_eq!(b.double_value(&[19]), 8.0);
        assert!(held.requires_grad());
    }

    #[test]
    fn gradients_accumulate_into_the_flat_buffer() {
        let a = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        let b = Tensor::from_slice(&[3.0f32]).set_requires_grad(true);
        let params = [a.shallow_clone(), b.shallow_clone()];
        let _flat = FlatBuffer::adopt(&params).unwrap();
        let grads = FlatBuffer::adopt_grads(&params).unwrap();
        assert_eq!(grads.data().abs().sum(Kind::Float).double_value(&[]), 0.0);
        for _ in 0..2 {
            ((&a * &a).sum(Kind::Float) + &b * 5.0).sum(Kind::Float).backward();
        }
        // d/da a^2 = 2a, twice; d/db 5b = 5, twice.
        let g: Vec<f32> = Vec::try_from(grads.data()).unwrap();
        assert_eq!(&g[..2], &[4.0, 8.0]);
        assert_eq!(g[16], 10.0);
        assert_eq!(a.grad().double_value(&[1]), 8.0);
    }

    #[test]
    fn mixed_dtypes_are_refused() {
        let a = Tensor::zeros([2], (Kind::Float, tch::Device::Cpu));
        let b = Tensor::zeros([2], (Kind::Double, tch::Device::Cpu));
        let err = FlatBuffer::adopt(&[a, b]).err().unwrap().to_string();
        assert!(err.contains("tensor 1"), "{err}");
    }
}
