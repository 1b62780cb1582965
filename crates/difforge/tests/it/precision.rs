//! `train.precision = "bf16"`: bfloat16 autocast (here on the CPU; the same switch on CUDA) with
//! float32 weights, optimiser and loss. Checked against float32: after 40 steps of the tiny
//! model the validation loss agrees within 2% (measured: 4e-4 relative), and it is not the
//! float32 run (autocast really applied).

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
