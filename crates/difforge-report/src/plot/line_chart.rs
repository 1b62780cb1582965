//! Line charts: axis ranges and tick labels from the data, one coloured line per series, a legend.

use plotters::coord::ranged1d::Ranged;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::text::{draw_label, text_size, Direction};
use super::{font, Area, DrawResult, Series, AXIS_FONT, GRID, TEXT, TICK_FONT, TITLE_FONT};

const X_LABELS: usize = 8;
const Y_LABELS: usize = 7;

/// Matplotlib's tab10: ten colours that stay distinguishable as lines.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Points that can be placed on an axis: finite, and small enough that a padded range stays finite.
pub(super) fn plottable((x, y): &(f64, f64)) -> bool {
    const LIMIT: f64 = 1e300;
    x.is_finite() && y.is_finite() && x.abs() < LIMIT && y.abs() < LIMIT
}

/// The axis range for values spanning `lo..=hi`, padded by 5% each side so lines and markers do
/// not sit on the frame; a range too narrow to show (one value, or equal values) is widened.
pub(super) fn padded_range(lo: f64, hi: f64) -> (f64, f64) {
    let magnitude = lo.abs().max(hi.abs());
    let span = hi - lo;
    if span <= magnitude * 1e-9 || span <= f64::MIN_POSITIVE {
        let centre = lo / 2.0 + hi / 2.0;
        let pad = if magnitude > 0.0 { magnitude * 0.1 } else { 1.0 };
        (centre - pad, centre + pad)
    } else {
        (lo - span * 0.05, hi + span * 0.05)
    }
}

/// Tick labels: fixed decimals matched to the tick spacing, or scientific notation for very large
/// or very small magnitudes, which fixed decimals would show as long strings or zeros.
#[derive(Debug, Clone, Copy)]
struct TickFormat {
    decimals: usize,
    scientific: bool,
    step: f64,
}

impl TickFormat {
    fn for_ticks(ticks: &[f64]) -> Self {
        let step = ticks.windows(2).map(|w| (w[1] - w[0]).abs()).filter(|d| *d > 0.0).fold(f64::INFINITY, f64::min);
        let magnitude = ticks.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let scientific = magnitude >= 1e6 || (magnitude > 0.0 && magnitude < 1e-3);
        let decimals = if scientific {
            // Enough significant digits to tell neighbouring ticks apart.
            let digits = if step.is_finite() && magnitude > 0.0 { (magnitude / step).log10().ceil().max(0.0) as usize } else { 1 };
            digits.clamp(1, 6)
        } else if step.is_finite() {
            // Steps are 1, 2 or 5 times a power of ten, measured as differences of floats (0.4 - 0.3
            // is 0.09999999999999998): the small allowance keeps 0.1 at one decimal.
            (-step.log10() - 1e-6).ceil().clamp(0.0, 12.0) as usize
        } else {
            // A single tick: show a few decimals of it.
            if magnitude >= 100.0 {
                0
            } else {
                3
            }
        };
        TickFormat { decimals, scientific, step: if step.is_finite() { step } else { 0.0 } }
    }

    fn format(&self, v: f64) -> String {
        // A tick at zero computed as 1e-17 would print as "-0.00" or "1.00e-17".
        let v = if v.abs() <= self.step * 1e-9 { 0.0 } else { v };
        if self.scientific && v != 0.0 {
            format!("{:.*e}", self.decimals, v)
        } else {
            format!("{:.*}", if self.scientific { 0 } else { self.decimals }, v)
        }
    }
}

/// The axis ranges of the points (padded), or the unit square when there are none.
pub(super) fn ranges<'a>(points: impl Iterator<Item = &'a (f64, f64)> + Clone) -> ((f64, f64), (f64, f64)) {
    if points.clone().next().is_none() {
        return ((0.0, 1.0), (0.0, 1.0));
    }
    let fold = |f: fn(&(f64, f64)) -> f64| points.clone().map(f).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (x_lo, x_hi) = fold(|p| p.0);
    let (y_lo, y_hi) = fold(|p| p.1);
    (padded_range(x_lo, x_hi), padded_range(y_lo, y_hi))
}

pub(super) type Chart<'a, 'b> = ChartContext<'a, super::text::TextBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Title, axes with measured label areas, tick labels and grid: everything but the data.
pub(super) fn axes<'a, 'b>(
    root: &'a DrawingArea<super::text::TextBackend<'b>, Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    x_range: (f64, f64),
    y_range: (f64, f64),
) -> DrawResult<Chart<'a, 'b>> {
    let x_ticks = RangedCoordf64::from(x_range.0..x_range.1).key_points(X_LABELS);
    let y_ticks = RangedCoordf64::from(y_range.0..y_range.1).key_points(Y_LABELS);
    let x_fmt = TickFormat::for_ticks(&x_ticks);
    let y_fmt = TickFormat::for_ticks(&y_ticks);
    // The y label area must hold the widest tick label plus the rotated axis name; measuring
    // beats a fixed width, which either wastes space or clips "0.000125".
    let widest_y =
        y_ticks.iter().map(|v| text_size(&y_fmt.format(*v), TICK_FONT).map(|(w, _)| w)).collect::<DrawResult<Vec<u32>>>()?.into_iter().max().unwrap_or(0);
    let y_area = widest_y + 12 + if y_label.is_empty() { 0 } else { 24 };
    let x_area = 24 + if x_label.is_empty() { 0 } else { 20 };

    let mut builder = ChartBuilder::on(root);
    builder.margin(12).margin_right(20).x_label_area_size(x_area).y_label_area_size(y_area);
    if !title.is_empty() {
        builder.caption(title, font(TITLE_FONT).color(&TEXT));
    }
    let mut chart = builder.build_cartesian_2d(x_range.0..x_range.1, y_range.0..y_range.1)?;

    let x_formatter = |v: &f64| x_fmt.format(*v);
    let y_formatter = |v: &f64| y_fmt.format(*v);
    let mut mesh = chart.configure_mesh();
    mesh.x_labels(X_LABELS)
        .y_labels(Y_LABELS)
        .x_label_formatter(&x_formatter)
        .y_label_formatter(&y_formatter)
        .label_style(font(TICK_FONT).color(&TEXT))
        .axis_desc_style(font(AXIS_FONT).color(&TEXT))
        .bold_line_style(GRID)
        .light_line_style(WHITE.mix(0.0))
        .axis_style(RGBColor(90, 90, 90));
    if !x_label.is_empty() {
        mesh.x_desc(x_label);
    }
    if !y_label.is_empty() {
        mesh.y_desc(y_label);
    }
    mesh.draw()?;
    Ok(chart)
}

/// Writes "no data" in the middle of an empty chart.
pub(super) fn no_data(chart: &Chart<'_, '_>) -> DrawResult<()> {
    let area = chart.plotting_area();
    let (w, h) = area.dim_in_pixel();
    let centre = (w as i32 / 2, h as i32 / 2);
    let anchor = Pos::new(HPos::Center, VPos::Center);
    draw_label(&area.strip_coord_spec(), "no data", AXIS_FONT, &RGBColor(120, 120, 120), anchor, Direction::Level, centre)
}

/// Draws the chart that [`line_chart_png`](super::line_chart_png) describes onto `root`.
pub(super) fn draw_line_chart(root: &Area<'_>, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> DrawResult<()> {
    let cleaned: Vec<Vec<(f64, f64)>> = series.iter().map(|s| s.points.iter().copied().filter(plottable).collect()).collect();
    let has_data = cleaned.iter().flatten().next().is_some();
    let (x_range, y_range) = ranges(cleaned.iter().flatten());
    let mut chart = axes(root, title, x_label, y_label, x_range, y_range)?;

    let mut any_named = false;
    for (i, (s, points)) in series.iter().zip(&cleaned).enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let line = color.stroke_width(2);
        let annotation = chart.draw_series(LineSeries::new(points.iter().copied(), line))?;
        if !s.name.is_empty() {
            any_named = true;
            let label = if points.is_empty() { format!("{} (no data)", s.name) } else { s.name.clone() };
            annotation.label(label).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], line));
        }
        // Sparse series (a metric at a few checkpoints, or a single point, which a line cannot
        // show) get markers so each measurement is visible.
        if points.len() <= 30 {
            chart.draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
        }
    }

    if !has_data {
        no_data(&chart)?;
    }

    if any_named {
        let position = legend_corner(&cleaned, x_range, y_range);
        chart
            .configure_series_labels()
            .position(position)
            .margin(10)
            .label_font(font(TICK_FONT).color(&TEXT))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(160, 160, 160))
            .draw()?;
    }
    Ok(())
}

/// The plot corner that the data crosses least, so the legend hides as little as possible
/// (upper right first, as readers expect it there, for a falling loss curve it is also empty).
fn legend_corner(series: &[Vec<(f64, f64)>], (x0, x1): (f64, f64), (y0, y1): (f64, f64)) -> SeriesLabelPosition {
    // Corners as (left?, top?) in unit coordinates; a legend of a few entries covers about a
    // third of the width and a quarter of the height.
    let corners = [
        (SeriesLabelPosition::UpperRight, false, true),
        (SeriesLabelPosition::UpperLeft, true, true),
        (SeriesLabelPosition::LowerRight, false, false),
        (SeriesLabelPosition::LowerLeft, true, false),
    ];
    let mut counts = [0usize; 4];
    let mut count = |u: f64, v: f64| {
        for (k, (_, left, top)) in corners.iter().enumerate() {
            let in_x = if *left { u < 0.4 } else { u > 0.6 };
            let in_y = if *top { v > 0.7 } else { v < 0.3 };
            if in_x && in_y {
                counts[k] += 1;
            }
        }
    };
    for points in series {
        let unit: Vec<(f64, f64)> = points.iter().map(|(x, y)| ((x - x0) / (x1 - x0), (y - y0) / (y1 - y0))).collect();
        if let [only] = unit.as_slice() {
            count(only.0, only.1);
        }
        // Sample along each segment too: two far-apart points can draw a line through a corner.
        for w in unit.windows(2) {
            for k in 0..8 {
                let t = k as f64 / 8.0;
                count(w[0].0 + (w[1].0 - w[0].0) * t, w[0].1 + (w[1].1 - w[0].1) * t);
            }
        }
        if let Some(last) = unit.last().filter(|_| unit.len() > 1) {
            count(last.0, last.1);
        }
    }
    let best = (0..4).min_by_key(|&k| counts[k]).unwrap_or(0);
    corners[best].0.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_are_short() {
        let f = TickFormat::for_ticks(&[0.0, 0.1, 0.2, 0.30000000000000004]);
        assert_eq!(f.format(0.30000000000000004), "0.3");
        assert_eq!(f.format(-1e-18), "0.0");
        let f = TickFormat::for_ticks(&[0.3, 0.4, 0.5]);
        assert_eq!(f.format(0.4), "0.4");
        let f = TickFormat::for_ticks(&[0.25, 0.3, 0.35]);
        assert_eq!(f.format(0.35), "0.35");
        let f = TickFormat::for_ticks(&[0.0, 2000.0, 4000.0]);
        assert_eq!(f.format(4000.0), "4000");
        let f = TickFormat::for_ticks(&[1e-4, 2e-4]);
        assert_eq!(f.format(2e-4), "2.0e-4");
    }
}
