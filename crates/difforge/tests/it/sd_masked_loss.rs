//! Masked loss in Stable Diffusion fine-tuning (the tiny SD 1.5 fixture): masks of ones train
//! exactly as no masks; masks that keep half of each image change what is learnt, and such a
//! run resumes byte-identically after SIGKILL.

use super::sd_finetune::{config, train, train_and_check_resume, write_config};
use std::path::Path;

/// 8 captioned 32x32 squares, and in `masks/` a mask per image: all white, or (`half`) white
/// on the top half only.
fn write_data(dir: &Path, half: bool) {
    let (images, masks) = (dir.join("images"), dir.join("masks"));
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(&masks).unwrap();
    for i in 0..8u32 {
        let img = image::RgbImage::from_fn(32, 32, |x, y| {
            image::Rgb(if (4 + 2 * i..16 + 2 * i).contains(&x) && (8..24).contains(&y) { [200, 40, 40] } else { [240, 240, 240] })
        });
        img.save(images.join(format!("{i:03}.png"))).unwrap();
        std::fs::write(images.join(format!("{i:03}.txt")), "a red square").unwrap();
        let mask = image::GrayImage::from_fn(32, 32, |_, y| image::Luma([if half && y >= 16 { 0 } else { 255 }]));
        mask.save(masks.join(format!("{i:03}.png"))).unwrap();
    }
}

fn masked_config(dir: &Path, steps: u64, masked: bool) -> String {
    let text = config(&dir.join("images"), steps, true);
    if masked {
        text.replace("val_fraction = 0.2\n", &format!("val_fraction = 0.2\nmask_path = \"{}\"\n", dir.join("masks").display()))
    } else {
        text
    }
}

fn weights(run: &Path) -> Vec<u8> {
    std::fs::read(run.join("checkpoints/step-00000008/model.safetensors")).unwrap()
}

#[test]
fn masks_of_ones_change_nothing_and_half_masks_change_what_is_learnt() {
    let dir = tempfile::tempdir().unwrap();
    let (full, half) = (dir.path().join("full"), dir.path().join("half"));
    write_data(&full, false);
    write_data(&half, true);
    let unmasked = dir.path().join("unmasked");
    train(&write_config(dir.path(), "unmasked.toml", &masked_config(&full, 8, false)), &unmasked);
    let ones = dir.path().join("ones");
    train(&write_config(dir.path(), "ones.toml", &masked_config(&full, 8, true)), &ones);
    assert!(weights(&ones) == weights(&unmasked), "a mask of ones must train exactly as no mask");
    let halved = dir.path().join("halved");
    train(&write_config(dir.path(), "halved.toml", &masked_config(&half, 8, true)), &halved);
    assert!(weights(&halved) != weights(&unmasked), "half masks must change the training");
    train_and_check_resume(dir.path(), "halved-resumed", &masked_config(&half, 16, true));
}
