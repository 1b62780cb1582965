//! How the network computes: `train.precision = "bf16"` (bfloat16 autocast, here on the CPU; the
//! same switch on CUDA, with float32 weights, optimiser and loss) and `train.channels_last`
//! (NHWC activations). Each is checked against the default run of the tiny model: the
//! validation loss after 40 steps agrees within a tolerance, and the run is not the default
//! one (the option really applied).

use crate::common::train_tiny;

#[test]
fn bf16_autocast_trains_to_the_validation_loss_of_fp32() {
    let dir = tempfile::tempdir().unwrap();
    let val_loss = |precision: &str| {
        let run = dir.path().join(precision);
        let sets = ["train.steps=40", "train.val_every=40", "train.sample_every=0", &format!("train.precision=\"{precision}\"")];
        let summary = train_tiny(&run, &sets);
        summary["final_validation"]["val_loss"].as_f64().unwrap_or_else(|| panic!("{summary}"))
    };
    let (fp32, bf16) = (val_loss("fp32"), val_loss("bf16"));
    let relative = (bf16 - fp32).abs() / fp32;
    eprintln!("validation loss after 40 steps: fp32 {fp32:.6}, bf16 {bf16:.6} ({relative:.1e} relative)");
    assert!(relative < 0.02, "bf16 {bf16} vs fp32 {fp32}");
    assert!(bf16 != fp32, "bf16 autocast changed nothing: was it applied?");
}

#[test]
fn channels_last_activations_train_as_the_default_layout() {
    let dir = tempfile::tempdir().unwrap();
    // RGB images: with one channel NCHW and NHWC are the same memory, and nothing changes.
    let val_loss = |channels_last: bool| {
        let run = dir.path().join(format!("cl-{channels_last}"));
        let sets = ["train.steps=40", "train.val_every=40", "train.sample_every=0", "data.channels=3", &format!("train.channels_last={channels_last}")];
        let summary = train_tiny(&run, &sets);
        summary["final_validation"]["val_loss"].as_f64().unwrap_or_else(|| panic!("{summary}"))
    };
    let (nchw, nhwc) = (val_loss(false), val_loss(true));
    let relative = (nhwc - nchw).abs() / nchw;
    eprintln!("validation loss after 40 steps: NCHW {nchw:.9}, NHWC {nhwc:.9} ({relative:.1e} relative)");
    assert!(relative < 1e-4, "channels_last {nhwc} vs {nchw}");
    // libtorch's CPU convolutions sum in another order for NHWC inputs: the last bits move.
    assert!(nhwc != nchw, "channels_last changed nothing: was it applied?");
}
