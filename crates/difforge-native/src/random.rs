//! Noise from a private, seeded CPU generator: what `torch.Generator("cpu").manual_seed(seed)`
//! gives, without the race on libtorch's process-wide generator that `tch::manual_seed` +
//! `Tensor::randn` would have when other threads draw too.

use crate::{check, ffi, NativeError};
use tch::{Device, Kind, Tensor};

/// `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))` as float32 on the CPU.
pub fn randn_seeded(shape: &[i64], seed: u64) -> Result<Tensor, NativeError> {
    let mut out = Tensor::empty(shape, (Kind::Float, Device::Cpu));
    // SAFETY: a live tch handle to a CPU float tensor this function owns; the C side catches
    // every exception.
    let rc = unsafe { ffi::dfn_normal_seeded(out.as_mut_ptr(), seed) };
    check(rc)?;
    Ok(out)
}
