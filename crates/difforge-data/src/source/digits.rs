//! The embedded default dataset: OpenCV's sheet of 5,000 handwritten digits (20x20 grey cells;
//! digit d fills pixel rows 100*d .. 100*d+99, 100 cells per row). See assets/LICENSE-digits.txt.

use crate::error::DataError;
use crate::image_set::ImageSet;
use crate::preprocess::Preprocess;
use image::DynamicImage;
use rayon::prelude::*;

pub static DIGITS_PNG: &[u8] = include_bytes!("../../../../assets/digits.png");

const CELL: u32 = 20;
const PER_ROW: u32 = 100;
const PER_DIGIT: u32 = 500;

pub fn load_digits(prep: &Preprocess) -> Result<ImageSet, DataError> {
    let sheet = image::load_from_memory(DIGITS_PNG).map_err(|e| DataError::Embedded(e.to_string()))?.to_luma8();
    let cells: Vec<(usize, u32)> = (0..10usize).flat_map(|d| (0..PER_DIGIT).map(move |i| (d, i))).collect();
    let pixels: Vec<_> = cells
        .par_iter()
        .map(|&(digit, i)| {
            let x = (i % PER_ROW) * CELL;
            let y = digit as u32 * 5 * CELL + (i / PER_ROW) * CELL;
            let cell = image::imageops::crop_imm(&sheet, x, y, CELL, CELL).to_image();
            prep.apply(&DynamicImage::ImageLuma8(cell))
        })
        .collect();
    let mut set = ImageSet { class_names: (0..10).map(|d| d.to_string()).collect(), ..Default::default() };
    for ((digit, i), px) in cells.into_iter().zip(pixels) {
        set.push(px, Some(digit), None, format!("digits/{digit}/{i:03}"));
    }
    Ok(set)
}
