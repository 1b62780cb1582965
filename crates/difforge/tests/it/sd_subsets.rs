//! `[[data.subsets]]` in Stable Diffusion fine-tuning (the tiny SD 1.5 fixture): an instance
//! subset repeated with its own prompt beside a tagged subset with its own caption extension,
//! tag shuffling and flips trains, validates, and resumes byte-identically after SIGKILL.

use super::sd_finetune::{config, train_and_check_resume};
use std::path::Path;

/// `n` 32x32 images of one colour's square on grey, captioned in files of extension `ext`.
fn write_folder(dir: &Path, n: u32, rgb: [u8; 3], ext: &str, caption: &str) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let img = image::RgbImage::from_fn(32, 32, |x, y| image::Rgb(if (4 + i..20 + i).contains(&x) && (6..22).contains(&y) { rgb } else { [240, 240, 240] }));
        img.save(dir.join(format!("{i:03}.png"))).unwrap();
        std::fs::write(dir.join(format!("{i:03}{ext}")), caption).unwrap();
    }
}

#[test]
fn sd_lora_trains_on_subsets_with_their_own_settings_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (instance, tagged) = (dir.path().join("instance"), dir.path().join("tagged"));
    write_folder(&instance, 4, [200, 40, 40], ".txt", "ignored");
    write_folder(&tagged, 8, [40, 60, 200], ".caption", "blue square, grey background, photo");
    let subsets = format!(
        "[[data.subsets]]\npath = \"{}\"\nrepeats = 3\ninstance_prompt = \"a photo of sks square\"\ncaption_dropout = 0.0\n\
         [[data.subsets]]\npath = \"{}\"\ncaption_extension = \".caption\"\nshuffle_caption = true\nkeep_tokens = 1\nhflip = 0.5\n",
        instance.display(),
        tagged.display()
    );
    let text =
        config(Path::new("unused"), 16, true).replace("path = \"unused\"\n", "").replace("val_fraction = 0.2\n", &format!("val_fraction = 0.2\n{subsets}"));
    let (run, summary) = train_and_check_resume(dir.path(), "subsets", &text);
    assert!(summary["final_validation"]["val_loss"].as_f64().is_some_and(f64::is_finite), "{summary}");
    // The run's config keeps the subsets, so the resume above read the same data.
    let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert_eq!(saved.matches("[[data.subsets]]").count(), 2, "{saved}");
}
