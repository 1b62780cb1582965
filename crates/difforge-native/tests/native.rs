//! The native layer against libtorch itself: the fused kernel's numbers, the switches it sets,
//! and clear errors (not crashes) where the machine has no GPU.

use difforge_native::{cuda, fused_adamw, AdamWStep, CudaGraph};
use tch::{Device, Kind, Tensor};

/// torch.optim.AdamW(lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, fused=True) on
/// x = [1, -2] (float64), three steps of loss sum(x^2): PyTorch 2.11 gives these values (the
/// same as the unfused loop, which difforge-nn's test checks too).
const PYTORCH_AFTER_3_STEPS: [f64; 2] = [0.6989111831582322, -1.6949445143849768];

#[test]
fn fused_adamw_matches_pytorch() {
    let x = Tensor::from_slice(&[1.0f64, -2.0]);
    let (m, v) = (x.zeros_like(), x.zeros_like());
    let step = Tensor::zeros([], (Kind::Float, Device::Cpu));
    let s = AdamWStep { lr: 0.1, beta1: 0.9, beta2: 0.999, weight_decay: 0.01, eps: 1e-8 };
    for _ in 0..3 {
        let grad = &x * 2.0;
        let _ = step.shallow_clone().g_add_scalar_(1.0);
        fused_adamw(&x, &grad, &m, &v, &step, s).unwrap();
    }
    let got: Vec<f64> = Vec::try_from(&x).unwrap();
    for (g, w) in got.iter().zip(PYTORCH_AFTER_3_STEPS) {
        assert!((g - w).abs() < 1e-12, "{got:?} vs {PYTORCH_AFTER_3_STEPS:?}");
    }
}

#[test]
fn fused_adamw_refuses_mismatched_tensors() {
    let x = Tensor::zeros([4], (Kind::Float, Device::Cpu));
    let short = Tensor::zeros([3], (Kind::Float, Device::Cpu));
    let step = Tensor::ones([], (Kind::Float, Device::Cpu));
    let s = AdamWStep { lr: 0.1, beta1: 0.9, beta2: 0.999, weight_decay: 0.0, eps: 1e-8 };
    let err = fused_adamw(&x, &short, &x.zeros_like(), &x.zeros_like(), &step, s).unwrap_err();
    assert!(err.to_string().contains("share shape"), "{err}");
    let double_step = Tensor::ones([], (Kind::Double, Device::Cpu));
    let err = fused_adamw(&x, &x.zeros_like(), &x.zeros_like(), &x.zeros_like(), &double_step, s).unwrap_err();
    assert!(err.to_string().contains("float32"), "{err}");
}

#[test]
fn tf32_switches_round_trip() {
    for (matmul, cudnn) in [(true, true), (false, false), (true, false)] {
        cuda::set_tf32(matmul, cudnn).unwrap();
        assert_eq!(cuda::tf32().unwrap(), (matmul, cudnn));
    }
    cuda::set_tf32(false, true).unwrap(); // libtorch's defaults
}

#[test]
fn determinism_switches_round_trip() {
    cuda::set_deterministic(true, true).unwrap();
    assert_eq!(cuda::determinism().unwrap(), cuda::Determinism { cudnn: true, algorithms: true, fused_attention: false });
    cuda::set_deterministic(true, false).unwrap();
    assert_eq!(cuda::determinism().unwrap(), cuda::Determinism { cudnn: true, algorithms: true, fused_attention: true });
    cuda::set_deterministic(false, false).unwrap(); // libtorch's defaults
    assert_eq!(cuda::determinism().unwrap(), cuda::Determinism { cudnn: false, algorithms: false, fused_attention: true });
}

#[test]
fn cuda_queries_fail_cleanly_without_a_gpu() {
    if tch::Cuda::is_available() {
        let props = cuda::device_properties(0).unwrap();
        assert!(!props.name.is_empty() && props.total_memory_bytes > 0 && props.compute_capability.0 >= 3, "{props:?}");
        return;
    }
    assert!(cuda::device_properties(0).is_err());
    assert!(cuda::peak_memory(0).is_err());
    let err = CudaGraph::capture(0, 3, || Ok(())).err().expect("no graph without a GPU");
    assert!(!err.to_string().is_empty());
}

#[test]
fn cuda_half_is_built_where_libtorch_has_cuda() {
    // The venv's torch 2.11.0 wheel is the CUDA build; the native layer must have compiled its
    // CUDA half against it, or a lent GPU would find TF32, graphs and peak memory missing.
    let lib = std::path::PathBuf::from(env!("DIFFORGE_NATIVE_LIBTORCH_LIB"));
    assert_eq!(difforge_native::built_with_cuda(), lib.join("libtorch_cuda.so").exists());
}

#[test]
fn nccl_process_group_is_built_with_the_cuda_half() {
    // ProcessGroupNCCL links against libtorch_cuda: the feature must compile and link wherever
    // the CUDA half does (its run needs a GPU, which the data-parallel docs cover).
    assert_eq!(difforge_native::dist::built_with_nccl(), difforge_native::built_with_cuda());
}

#[test]
fn pin_memory_gives_a_pinned_copy_or_a_clear_error() {
    let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
    match difforge_native::pin_memory(&t) {
        Ok(pinned) => {
            assert!(tch::Cuda::is_available(), "pinned memory without a GPU");
            assert!(pinned.is_pinned(Device::Cuda(0)) && pinned.equal(&t));
        }
        Err(e) => assert!(!tch::Cuda::is_available(), "pinning failed with a GPU present: {e}"),
    }
}

#[test]
fn move_to_meta_moves_every_handle_of_the_tensor() {
    let mut t = Tensor::ones([2, 3], (Kind::Float, Device::Cpu));
    let other_handle = t.shallow_clone();
    difforge_native::move_to_meta(&mut t).unwrap();
    assert_eq!(other_handle.size(), [2, 3]);
    assert_eq!(other_handle.kind(), Kind::Float);
    // A meta tensor mixed with a host tensor: libtorch names both devices.
    let err = other_handle.f_add(&Tensor::ones([2, 3], (Kind::Float, Device::Cpu))).unwrap_err().to_string();
    assert!(err.contains("meta and cpu"), "{err}");
}
