//! Scatter plots of labelled points (one point per setting of a sweep, say), each point named by
//! a small label beside it.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::line_chart::{axes, no_data, plottable, ranges};
use super::text::{draw_label, text_size, Direction};
use super::{Area, DrawResult, TEXT};

const POINT: RGBColor = RGBColor(31, 119, 180);
const LABEL_FONT: f64 = 11.0;

/// Draws the chart that [`scatter_png`](super::scatter_png) describes onto `root`.
pub(super) fn draw_scatter(root: &Area<'_>, title: &str, x_label: &str, y_label: &str, points: &[(f64, f64, String)]) -> DrawResult<()> {
    let kept: Vec<(f64, f64, &str)> = points.iter().filter(|(x, y, _)| plottable(&(*x, *y))).map(|(x, y, l)| (*x, *y, l.as_str())).collect();
    let xy: Vec<(f64, f64)> = kept.iter().map(|(x, y, _)| (*x, *y)).collect();
    let (x_range, y_range) = ranges(xy.iter());
    let mut chart = axes(root, title, x_label, y_label, x_range, y_range)?;
    if kept.is_empty() {
        return no_data(&chart);
    }
    chart.draw_series(xy.iter().map(|p| Circle::new(*p, 4, POINT.filled())))?;
    let area = chart.plotting_area();
    let plain = area.strip_coord_spec();
    let (left, top) = (area.get_base_pixel().0, area.get_base_pixel().1);
    let (width, height) = (area.dim_in_pixel().0 as i32, area.dim_in_pixel().1 as i32);
    let mut placed: Vec<LabelBox> = Vec::new();
    for (x, y, label) in &kept {
        let (px, py) = area.map_coordinate(&(*x, *y));
        let (px, py) = (px - left, py - top);
        let (w, h) = text_size(label, LABEL_FONT)?;
        let spot = place_label((px, py), (w as i32, h as i32), (width, height), &placed);
        placed.push(spot);
        let (anchor, at) = if spot.x0 >= px { (HPos::Left, spot.x0) } else { (HPos::Right, spot.x1) };
        draw_label(&plain, label, LABEL_FONT, &TEXT, Pos::new(anchor, VPos::Center), Direction::Level, (at, (spot.y0 + spot.y1) / 2))?;
    }
    Ok(())
}

/// A label's rectangle in plot pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
struct LabelBox {
    x0: i32,
    y0: i32,
    x1: i32,
    y1: i32,
}

impl LabelBox {
    fn overlaps(&self, o: &LabelBox) -> bool {
        self.x0 < o.x1 && o.x0 < self.x1 && self.y0 < o.y1 && o.y0 < self.y1
    }
}

/// Where a label of `size` goes beside the point at `p`: right of it, else left, else a line
/// above or below on either side; the first spot inside the plot that no earlier label covers
/// (right of the point when every spot is taken).
fn place_label(p: (i32, i32), size: (i32, i32), plot: (i32, i32), placed: &[LabelBox]) -> LabelBox {
    const GAP: i32 = 7;
    let (w, h) = size;
    let at = |right: bool, dy: i32| {
        let x0 = if right { p.0 + GAP } else { p.0 - GAP - w };
        let yc = p.1 + dy;
        LabelBox { x0, y0: yc - h / 2, x1: x0 + w, y1: yc - h / 2 + h }
    };
    let candidates = [at(true, 0), at(false, 0), at(true, -h), at(false, -h), at(true, h), at(false, h), at(true, -2 * h), at(true, 2 * h)];
    let inside = |b: &LabelBox| b.x0 >= 0 && b.x1 <= plot.0 && b.y0 >= 0 && b.y1 <= plot.1;
    let free = |b: &LabelBox| !placed.iter().any(|o| o.overlaps(b));
    candidates.iter().copied().find(|b| inside(b) && free(b)).or_else(|| candidates.iter().copied().find(inside)).unwrap_or(candidates[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_of_close_points_do_not_overlap() {
        let plot = (600, 400);
        let first = place_label((100, 200), (120, 12), plot, &[]);
        assert_eq!(first.x0, 107, "right of the point when free");
        let second = place_label((104, 202), (120, 12), plot, &[first]);
        assert!(!second.overlaps(&first), "{first:?} {second:?}");
        let near_edge = place_label((590, 100), (120, 12), plot, &[]);
        assert!(near_edge.x1 <= 590, "left of a point near the right edge: {near_edge:?}");
    }
}
