//! Confusion-matrix heat maps: layout measured from the labels, the coloured grid with counts,
//! class labels, axis names and a colour bar.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::text::{draw_label, text_size, Direction};
use super::{shorten, Area, DrawResult, AXIS_FONT, GRID, TEXT, TICK_FONT, TITLE_FONT};

/// Matplotlib's "Blues", sampled evenly from 0 to 1: white for nothing, dark blue for a full row.
const BLUES: [(u8, u8, u8); 9] =
    [(247, 251, 255), (222, 235, 247), (198, 219, 239), (158, 202, 225), (107, 174, 214), (66, 146, 198), (33, 113, 181), (8, 81, 156), (8, 48, 107)];

const MARGIN: i32 = 16;
const BAR_WIDTH: i32 = 14;

/// Where each part of the confusion-matrix picture goes; computed before drawing because the
/// picture's size depends on the labels' measured widths.
#[derive(Debug)]
pub(super) struct MatrixLayout {
    pub(super) width: u32,
    pub(super) height: u32,
    /// Side of one cell in pixels.
    cell: i32,
    /// Top-left corner of the grid.
    grid: (i32, i32),
    label_font: f64,
    /// Class labels are drawn only when a cell is tall enough to hold readable text.
    show_labels: bool,
    /// Column labels are rotated to read upwards when they are wider than a cell.
    rotate_columns: bool,
    title_y: i32,
    /// Left edge of the colour bar.
    bar_x: i32,
    /// Centre of the rotated "asked" axis name, and of the "predicted" one.
    asked_x: i32,
    predicted_y: i32,
}

impl MatrixLayout {
    pub(super) fn new(n: usize, labels: &[String], title: &str) -> DrawResult<Self> {
        let n_i = i32::try_from(n)?;
        // Cells as large as reads well for 10 classes, shrinking to fit a bounded picture: about
        // 600 px of grid up to 30 classes, 1000 px past 50.
        let cell = if n <= 50 { (600 / n_i).clamp(20, 56) } else { (1000 / n_i).max(2) };
        let label_font = (f64::from(cell) * 0.6).clamp(9.0, 14.0);
        let show_labels = cell >= 9;
        let (mut label_w, mut label_h) = (0i32, 0i32);
        if show_labels {
            for label in labels {
                let (w, h) = text_size(&shorten(label), label_font)?;
                label_w = label_w.max(i32::try_from(w)?);
                label_h = label_h.max(i32::try_from(h)?);
            }
        }
        let rotate_columns = show_labels && label_w > cell - 4;
        let axis_h = i32::try_from(text_size("predicted", AXIS_FONT)?.1)?;
        let (title_w, title_h) = if title.is_empty() {
            (0, 0)
        } else {
            let (w, h) = text_size(title, TITLE_FONT)?;
            (i32::try_from(w)?, i32::try_from(h)?)
        };
        let bar_label_w = i32::try_from(text_size("100%", TICK_FONT)?.0)?;

        let grid_side = cell * n_i;
        let left = MARGIN + axis_h + 10 + label_w + 8;
        let top = MARGIN + if title.is_empty() { 0 } else { title_h + 18 };
        let column_labels = if !show_labels {
            0
        } else if rotate_columns {
            label_w
        } else {
            label_h
        };
        let bottom = 8 + column_labels + 12 + axis_h + MARGIN;
        let right = 18 + BAR_WIDTH + 6 + bar_label_w + MARGIN;
        let natural_w = left + grid_side + right;
        let width = natural_w.max(title_w + 2 * MARGIN).max(320);
        // Centre the grid and its labels when the title (or the minimum width) is wider.
        let shift = (width - natural_w) / 2;
        let height = top + grid_side + bottom;
        Ok(MatrixLayout {
            width: u32::try_from(width)?,
            height: u32::try_from(height)?,
            cell,
            grid: (left + shift, top),
            label_font,
            show_labels,
            rotate_columns,
            title_y: MARGIN,
            bar_x: left + shift + grid_side + 18,
            asked_x: shift + MARGIN + axis_h / 2,
            predicted_y: height - MARGIN - axis_h / 2,
        })
    }
}

/// Colour for a fraction in [0, 1], interpolated along [`BLUES`].
fn blues(fraction: f64) -> RGBColor {
    let t = if fraction.is_finite() { fraction.clamp(0.0, 1.0) } else { 0.0 };
    let scaled = t * (BLUES.len() - 1) as f64;
    let i = (scaled.floor() as usize).min(BLUES.len() - 2);
    let f = scaled - i as f64;
    let mix = |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * f).round() as u8;
    let (a, b) = (BLUES[i], BLUES[i + 1]);
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Draws the heat map that [`confusion_matrix_png`](super::confusion_matrix_png) describes,
/// placed by `layout`, onto `root`.
pub(super) fn draw_confusion_matrix(root: &Area<'_>, layout: &MatrixLayout, matrix: &[Vec<u64>], labels: &[String], title: &str) -> DrawResult<()> {
    let n = i32::try_from(matrix.len())?;
    let c = layout.cell;
    let (gx, gy) = layout.grid;
    let side = c * n;
    let none = Direction::Level;

    if !title.is_empty() {
        let anchor = Pos::new(HPos::Center, VPos::Top);
        draw_label(root, title, TITLE_FONT, &TEXT, anchor, none, (layout.width as i32 / 2, layout.title_y))?;
    }

    // Counts at most a few digits wide fit at this size; shrink per cell when a count does not.
    let count_font = (f64::from(c) * 0.38).min(14.0);
    for (r, row) in matrix.iter().enumerate() {
        // u128: a row of u64 counts cannot overflow it.
        let total: u128 = row.iter().map(|&v| u128::from(v)).sum();
        for (col, &count) in row.iter().enumerate() {
            let fraction = if total == 0 { 0.0 } else { count as f64 / total as f64 };
            let x = gx + c * i32::try_from(col)?;
            let y = gy + c * i32::try_from(r)?;
            let fill = blues(fraction);
            root.draw(&Rectangle::new([(x, y), (x + c, y + c)], fill.filled()))?;
            if c >= 12 {
                draw_count(root, count, fraction, count_font, c, (x, y))?;
            }
        }
    }
    // Thin separators tell white (empty) cells apart; skipped when cells are too small for them.
    if c >= 8 {
        for k in 1..n {
            let p = k * c;
            root.draw(&PathElement::new(vec![(gx + p, gy), (gx + p, gy + side)], GRID))?;
            root.draw(&PathElement::new(vec![(gx, gy + p), (gx + side, gy + p)], GRID))?;
        }
    }
    root.draw(&Rectangle::new([(gx, gy), (gx + side, gy + side)], RGBColor(90, 90, 90)))?;

    if layout.show_labels {
        let lf = layout.label_font;
        for (k, label) in labels.iter().enumerate() {
            let label = shorten(label);
            let mid = c * i32::try_from(k)? + c / 2;
            let row_anchor = Pos::new(HPos::Right, VPos::Center);
            draw_label(root, &label, lf, &TEXT, row_anchor, none, (gx - 8, gy + mid))?;
            let (column_anchor, direction) = if layout.rotate_columns {
                // Reads bottom to top, ending just under the grid.
                (Pos::new(HPos::Right, VPos::Center), Direction::Upward)
            } else {
                (Pos::new(HPos::Center, VPos::Top), none)
            };
            draw_label(root, &label, lf, &TEXT, column_anchor, direction, (gx + mid, gy + side + 8))?;
        }
    }

    // Axis names: "asked" reads upwards left of the row labels, "predicted" sits under the columns.
    let axis_anchor = Pos::new(HPos::Center, VPos::Center);
    draw_label(root, "predicted", AXIS_FONT, &TEXT, axis_anchor, none, (gx + side / 2, layout.predicted_y))?;
    draw_label(root, "asked", AXIS_FONT, &TEXT, axis_anchor, Direction::Upward, (layout.asked_x, gy + side / 2))?;

    draw_colour_bar(root, layout.bar_x, gy, side)
}

/// Writes `count` centred in its cell, in white on dark cells; zero counts are drawn faint so the
/// eye goes to the cells that matter.
fn draw_count(root: &Area<'_>, count: u64, fraction: f64, size: f64, cell: i32, (x, y): (i32, i32)) -> DrawResult<()> {
    let text = count.to_string();
    let mut size = size;
    // Shrink until the number fits the cell with a pixel each side; give up below legibility.
    while i32::try_from(text_size(&text, size)?.0)? > cell - 3 {
        size -= 1.0;
        if size < 7.0 {
            return Ok(());
        }
    }
    let color = if count == 0 {
        RGBColor(185, 185, 185)
    } else if fraction > 0.5 {
        WHITE
    } else {
        TEXT
    };
    let anchor = Pos::new(HPos::Center, VPos::Center);
    draw_label(root, &text, size, &color, anchor, Direction::Level, (x + cell / 2, y + cell / 2))
}

/// A vertical bar from 0% (bottom) to 100% (top) of a row, beside the grid.
fn draw_colour_bar(root: &Area<'_>, x: i32, top: i32, height: i32) -> DrawResult<()> {
    for k in 0..height {
        let fraction = 1.0 - f64::from(k) / f64::from((height - 1).max(1));
        root.draw(&PathElement::new(vec![(x, top + k), (x + BAR_WIDTH, top + k)], blues(fraction)))?;
    }
    root.draw(&Rectangle::new([(x, top), (x + BAR_WIDTH, top + height)], RGBColor(90, 90, 90)))?;
    let anchor = Pos::new(HPos::Left, VPos::Center);
    for (fraction, text) in [(1.0, "100%"), (0.5, "50%"), (0.0, "0%")] {
        let y = top + ((1.0 - fraction) * f64::from(height - 1)).round() as i32;
        root.draw(&PathElement::new(vec![(x + BAR_WIDTH, y), (x + BAR_WIDTH + 3, y)], RGBColor(90, 90, 90)))?;
        draw_label(root, text, TICK_FONT, &TEXT, anchor, Direction::Level, (x + BAR_WIDTH + 6, y))?;
    }
    Ok(())
}
