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
    let width = area.dim_in_pixel().0 as i32;
    for (x, y, label) in &kept {
        let (px, py) = area.map_coordinate(&(*x, *y));
        let (px, py) = (px - left, py - top);
        // Right of the point, unless the label would run off the plot: then left of it.
        let label_width = text_size(label, LABEL_FONT)?.0 as i32;
        let (anchor, at) = if px + 7 + label_width <= width { (HPos::Left, px + 7) } else { (HPos::Right, px - 7) };
        draw_label(&plain, label, LABEL_FONT, &TEXT, Pos::new(anchor, VPos::Center), Direction::Level, (at, py))?;
    }
    Ok(())
}
