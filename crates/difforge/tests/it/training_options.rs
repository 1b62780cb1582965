//! The loss and noise options of `[diffusion]` (Huber loss, offset noise, logit-normal
//! timesteps): each changes what the tiny model learns, and each run is reproducible.

use crate::common::train_tiny;
use std::path::Path;

fn final_weights(run: &Path) -> Vec<u8> {
    std::fs::read(run.join("checkpoints/step-00000006/model.safetensors")).unwrap()
}

#[test]
fn huber_loss_offset_noise_and_logit_normal_timesteps_each_change_training_reproducibly() {
    let dir = tempfile::tempdir().unwrap();
    let train = |name: &str, option: Option<&str>| {
        let run = dir.path().join(name);
        let mut sets = vec!["train.steps=6", "train.val_every=0"];
        sets.extend(option);
        train_tiny(&run, &sets);
        final_weights(&run)
    };
    let plain = train("plain", None);
    for (i, option) in ["diffusion.loss=\"huber\"", "diffusion.noise_offset=0.1", "diffusion.timestep_sampling=\"logit-normal\""].into_iter().enumerate() {
        let (a, b) = (train(&format!("{i}a"), Some(option)), train(&format!("{i}b"), Some(option)));
        assert!(a == b, "{option}: two runs differ");
        assert!(a != plain, "{option}: training is unchanged");
    }
}

/// The batch prefetch thread prepares the batches the step would have assembled itself: the
/// same weights with it and without it.
#[test]
fn prefetching_batches_changes_no_bit_of_training() {
    let dir = tempfile::tempdir().unwrap();
    let train = |prefetch: bool| {
        let run = dir.path().join(format!("prefetch-{prefetch}"));
        train_tiny(&run, &["train.steps=6", "train.val_every=0", &format!("train.prefetch={prefetch}")]);
        final_weights(&run)
    };
    assert!(train(true) == train(false), "prefetched batches gave other weights");
}
