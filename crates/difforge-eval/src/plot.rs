//! PNG plots for the evaluation report: line charts (loss over steps, a metric over checkpoints)
//! and confusion-matrix heat maps.
//!
//! Text is drawn with DejaVu Sans embedded in the library (`assets/`), so plots look the same on
//! every machine and no system font lookup (fontconfig) is needed. The font is registered with
//! plotters' `ab_glyph` feature (plotters measures legend text with it), but glyphs are placed by
//! [`TextBackend`] here: plotters 0.3.7's own ab_glyph drawing ignores each glyph's side bearing
//! and puts the baseline half a size below the anchor, which garbles digits ("1" runs into its
//! neighbours) and lifts centred text. Plots are rendered into an RGB buffer in memory, encoded
//! as PNG with `image`, and written atomically, so a report never links a half-written picture.

use std::error::Error as StdError;
use std::io::Cursor;
use std::path::Path;
use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, Glyph, PxScale, ScaleFont};
use plotters::backend::RGBPixel;
use plotters::coord::ranged1d::Ranged;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle, FontTransform};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingErrorKind,
};

use crate::EvalError;

/// One line of a line chart: a legend name and its (x, y) points, drawn in the order given.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
/// plotters' own defaults (legend, mesh) ask for this family, so registering the embedded font
/// under it makes every piece of text use it.
const FONT_FAMILY: &str = "sans-serif";

const LINE_CHART_SIZE: (u32, u32) = (640, 400);
/// More classes than this would make a picture tens of thousands of pixels wide.
const MAX_CLASSES: usize = 2000;
/// Labels longer than this are cut with an ellipsis so one long class name cannot squeeze the grid.
const MAX_LABEL_CHARS: usize = 18;

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

/// Matplotlib's "Blues", sampled evenly from 0 to 1: white for nothing, dark blue for a full row.
const BLUES: [(u8, u8, u8); 9] = [
    (247, 251, 255),
    (222, 235, 247),
    (198, 219, 239),
    (158, 202, 225),
    (107, 174, 214),
    (66, 146, 198),
    (33, 113, 181),
    (8, 81, 156),
    (8, 48, 107),
];

const TEXT: RGBColor = RGBColor(30, 30, 30);
const GRID: RGBColor = RGBColor(225, 225, 225);

type DrawResult<T> = Result<T, Box<dyn StdError + Send + Sync>>;

/// Draws one line per series, with a legend, into a 640x400 PNG at `path`.
///
/// Axis ranges come from the data, padded; non-finite points (and magnitudes beyond 1e300, which
/// no axis can span) are skipped. Empty series, a single point and constant values still give a
/// valid picture (an empty chart says "no data").
pub fn line_chart_png(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<(), EvalError> {
    let (w, h) = LINE_CHART_SIZE;
    let buf = render(w, h, |root| {
        draw_line_chart(root, title, x_label, y_label, series)
    })
    .map_err(|e| draw_error(path, e.as_ref()))?;
    write_png(path, w, h, buf)
}

/// Draws a confusion matrix as a heat map into a PNG at `path`: rows are the class asked for,
/// columns the class predicted; each cell is coloured by its fraction of the row and shows its
/// count. The picture grows with the number of classes (about 700 px wide for 10 classes).
///
/// Errors with [`EvalError::Input`] when the matrix is empty or not square, when `labels` does not
/// name each class once, or when there are more than 2000 classes.
pub fn confusion_matrix_png(
    path: &Path,
    matrix: &[Vec<u64>],
    labels: &[String],
    title: &str,
) -> Result<(), EvalError> {
    let n = matrix.len();
    if n == 0 {
        return Err(EvalError::Input("confusion matrix is empty".into()));
    }
    if let Some((i, row)) = matrix.iter().enumerate().find(|(_, row)| row.len() != n) {
        return Err(EvalError::Input(format!(
            "confusion matrix is not square: {n} rows but row {i} has {} columns",
            row.len()
        )));
    }
    if labels.len() != n {
        return Err(EvalError::Input(format!(
            "confusion matrix has {n} classes but {} labels were given",
            labels.len()
        )));
    }
    if n > MAX_CLASSES {
        return Err(EvalError::Input(format!(
            "cannot plot a confusion matrix of {n} classes (at most {MAX_CLASSES})"
        )));
    }
    let layout = MatrixLayout::new(n, labels, title).map_err(|e| draw_error(path, e.as_ref()))?;
    let (w, h) = (layout.width, layout.height);
    let buf = render(w, h, |root| {
        draw_confusion_matrix(root, &layout, matrix, labels, title)
    })
    .map_err(|e| draw_error(path, e.as_ref()))?;
    write_png(path, w, h, buf)
}

// ---------------------------------------------------------------------------------------------
// Shared plumbing

/// The embedded font, parsed and registered with plotters once per process.
fn embedded_font() -> DrawResult<&'static FontRef<'static>> {
    static FONT: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
    FONT.get_or_init(|| {
        let font = FontRef::try_from_slice(FONT_BYTES).ok()?;
        register_font(FONT_FAMILY, FontStyle::Normal, FONT_BYTES).ok()?;
        Some(font)
    })
    .as_ref()
    .ok_or_else(|| "the embedded plot font could not be loaded".into())
}

type Area<'a> = DrawingArea<TextBackend<'a>, Shift>;

/// Renders with `draw` into a white `w`x`h` RGB buffer and returns the buffer.
fn render(w: u32, h: u32, draw: impl FnOnce(&Area<'_>) -> DrawResult<()>) -> DrawResult<Vec<u8>> {
    let font = embedded_font()?;
    let mut buf = vec![0u8; w as usize * h as usize * 3];
    {
        let inner = BitMapBackend::<RGBPixel>::with_buffer_and_format(&mut buf, (w, h))?;
        let root = TextBackend { inner, font }.into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    Ok(buf)
}

fn write_png(path: &Path, w: u32, h: u32, rgb: Vec<u8>) -> Result<(), EvalError> {
    let write_error = |reason: String| EvalError::Write {
        path: path.to_path_buf(),
        reason,
    };
    let image = image::RgbImage::from_raw(w, h, rgb)
        .ok_or_else(|| write_error("plot buffer has the wrong size".into()))?;
    let mut png = Cursor::new(Vec::new());
    image
        .write_to(&mut png, image::ImageFormat::Png)
        .map_err(|e| write_error(format!("cannot encode PNG: {e}")))?;
    difforge_core::atomic::write_atomic(path, png.get_ref()).map_err(|e| write_error(e.to_string()))
}

fn draw_error(path: &Path, e: &(dyn StdError + Send + Sync)) -> EvalError {
    EvalError::Write {
        path: path.to_path_buf(),
        reason: format!("cannot draw the plot: {e}"),
    }
}

fn font(size: f64) -> FontDesc<'static> {
    FontDesc::new(FontFamily::Name(FONT_FAMILY), size, FontStyle::Normal)
}

/// Cuts a label to [`MAX_LABEL_CHARS`] characters, marking the cut with an ellipsis.
fn shorten(label: &str) -> String {
    if label.chars().count() <= MAX_LABEL_CHARS {
        label.to_string()
    } else {
        let mut s: String = label.chars().take(MAX_LABEL_CHARS - 1).collect();
        s.push('…');
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Text

/// One line of text laid out at the origin: glyphs on a baseline at `ascent`, so the line's box
/// runs from (0, 0) to (`width`, `height`) like plotters' layout boxes.
struct TextLine {
    glyphs: Vec<Glyph>,
    width: f32,
    height: f32,
}

/// Lays `text` out in the embedded font; `size` is the line height (ascent to descent) in
/// pixels, as with plotters' ab_glyph fonts, so sizes mean the same either way.
fn layout(font: &FontRef<'static>, text: &str, size: f64) -> TextLine {
    let scale = PxScale::from(size as f32);
    let scaled = font.as_scaled(scale);
    let mut pen = 0.0f32;
    let mut prev = None;
    let mut glyphs = Vec::with_capacity(text.len());
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        if let Some(p) = prev {
            pen += scaled.kern(p, id);
        }
        glyphs.push(id.with_scale_and_position(scale, ab_glyph::point(pen, scaled.ascent())));
        pen += scaled.h_advance(id);
        prev = Some(id);
    }
    TextLine {
        glyphs,
        width: pen,
        height: scaled.height(),
    }
}

/// How a piece of text runs: level, or rotated to read from bottom to top (axis names, crowded
/// column labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Level,
    Upward,
}

/// Draws `text` in the embedded font with its `anchor` point at `pos`.
fn draw_label(
    area: &Area<'_>,
    text: &str,
    size: f64,
    color: &RGBColor,
    anchor: Pos,
    direction: Direction,
    pos: (i32, i32),
) -> DrawResult<()> {
    let transform = match direction {
        Direction::Level => FontTransform::None,
        Direction::Upward => FontTransform::Rotate270,
    };
    let style = font(size).transform(transform).color(color).pos(anchor);
    area.draw_text(text, &style, pos)?;
    Ok(())
}

/// Width and height of `text` in pixels at `size`, as [`TextBackend`] will draw it.
fn text_size(text: &str, size: f64) -> DrawResult<(u32, u32)> {
    let line = layout(embedded_font()?, text, size);
    Ok((line.width.ceil() as u32, line.height.ceil() as u32))
}

/// The bitmap backend with text drawn by [`layout`]: glyphs at their true outline positions
/// (sub-pixel pen, side bearings, kerning) and anchors measured on the ascent-to-descent box.
/// Everything else goes to the bitmap backend unchanged.
struct TextBackend<'a> {
    inner: BitMapBackend<'a, RGBPixel>,
    font: &'static FontRef<'static>,
}

type BitmapError = <BitMapBackend<'static, RGBPixel> as DrawingBackend>::ErrorType;
type BackendResult<T = ()> = Result<T, DrawingErrorKind<BitmapError>>;

impl DrawingBackend for TextBackend<'_> {
    type ErrorType = BitmapError;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }
    fn ensure_prepared(&mut self) -> BackendResult {
        self.inner.ensure_prepared()
    }
    fn present(&mut self) -> BackendResult {
        self.inner.present()
    }
    fn draw_pixel(&mut self, point: BackendCoord, color: BackendColor) -> BackendResult {
        self.inner.draw_pixel(point, color)
    }
    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> BackendResult {
        self.inner.draw_line(from, to, style)
    }
    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> BackendResult {
        self.inner.draw_rect(upper_left, bottom_right, style, fill)
    }
    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> BackendResult {
        self.inner.draw_path(path, style)
    }
    fn draw_circle<S: BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> BackendResult {
        self.inner.draw_circle(center, radius, style, fill)
    }
    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> BackendResult {
        self.inner.fill_polygon(vert, style)
    }
    fn blit_bitmap(&mut self, pos: BackendCoord, size: (u32, u32), src: &[u8]) -> BackendResult {
        self.inner.blit_bitmap(pos, size, src)
    }

    fn estimate_text_size<S: BackendTextStyle>(
        &self,
        text: &str,
        style: &S,
    ) -> BackendResult<(u32, u32)> {
        let line = layout(self.font, text, style.size());
        Ok((line.width.ceil() as u32, line.height.ceil() as u32))
    }

    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> BackendResult {
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        let line = layout(self.font, text, style.size());
        let (w, h) = (line.width.round() as i32, line.height.round() as i32);
        let anchor = style.anchor();
        let dx = match anchor.h_pos {
            HPos::Left => 0,
            HPos::Center => -w / 2,
            HPos::Right => -w,
        };
        let dy = match anchor.v_pos {
            VPos::Top => 0,
            VPos::Center => -h / 2,
            VPos::Bottom => -h,
        };
        let transform = style.transform();
        // Coverage is collected first because ab_glyph's rasteriser callback cannot fail.
        let mut coverage = Vec::new();
        for glyph in line.glyphs {
            if let Some(outline) = self.font.outline_glyph(glyph) {
                let bounds = outline.px_bounds();
                let (bx, by) = (bounds.min.x as i32 + dx, bounds.min.y as i32 + dy);
                outline.draw(|x, y, c| {
                    if c > 0.0 {
                        coverage.push((
                            transform.transform(bx + x as i32, by + y as i32),
                            c.min(1.0),
                        ));
                    }
                });
            }
        }
        let (width, height) = self.get_size();
        for ((x, y), c) in coverage {
            let (x, y) = (pos.0 + x, pos.1 + y);
            if x >= 0 && y >= 0 && (x as u32) < width && (y as u32) < height {
                let alpha = color.alpha * f64::from(c);
                self.inner.draw_pixel(
                    (x, y),
                    BackendColor {
                        alpha,
                        rgb: color.rgb,
                    },
                )?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Line chart

/// Points that can be placed on an axis: finite, and small enough that a padded range stays finite.
fn plottable((x, y): &(f64, f64)) -> bool {
    const LIMIT: f64 = 1e300;
    x.is_finite() && y.is_finite() && x.abs() < LIMIT && y.abs() < LIMIT
}

/// The axis range for values spanning `lo..=hi`, padded by 5% each side so lines and markers do
/// not sit on the frame; a range too narrow to show (one value, or equal values) is widened.
fn padded_range(lo: f64, hi: f64) -> (f64, f64) {
    let magnitude = lo.abs().max(hi.abs());
    let span = hi - lo;
    if span <= magnitude * 1e-9 || span <= f64::MIN_POSITIVE {
        let centre = lo / 2.0 + hi / 2.0;
        let pad = if magnitude > 0.0 {
            magnitude * 0.1
        } else {
            1.0
        };
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
        let step = ticks
            .windows(2)
            .map(|w| (w[1] - w[0]).abs())
            .filter(|d| *d > 0.0)
            .fold(f64::INFINITY, f64::min);
        let magnitude = ticks.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let scientific = magnitude >= 1e6 || (magnitude > 0.0 && magnitude < 1e-3);
        let decimals = if scientific {
            // Enough significant digits to tell neighbouring ticks apart.
            let digits = if step.is_finite() && magnitude > 0.0 {
                (magnitude / step).log10().ceil().max(0.0) as usize
            } else {
                1
            };
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
        TickFormat {
            decimals,
            scientific,
            step: if step.is_finite() { step } else { 0.0 },
        }
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

const X_LABELS: usize = 8;
const Y_LABELS: usize = 7;
const TICK_FONT: f64 = 13.0;
const AXIS_FONT: f64 = 15.0;
const TITLE_FONT: f64 = 20.0;

fn draw_line_chart(
    root: &Area<'_>,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> DrawResult<()> {
    let cleaned: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| s.points.iter().copied().filter(plottable).collect())
        .collect();
    let all = || cleaned.iter().flatten();
    let has_data = all().next().is_some();
    let (x_range, y_range) = if has_data {
        let fold = |f: fn(&(f64, f64)) -> f64| {
            all()
                .map(f)
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                    (lo.min(v), hi.max(v))
                })
        };
        let (x_lo, x_hi) = fold(|p| p.0);
        let (y_lo, y_hi) = fold(|p| p.1);
        (padded_range(x_lo, x_hi), padded_range(y_lo, y_hi))
    } else {
        ((0.0, 1.0), (0.0, 1.0))
    };

    let x_ticks = RangedCoordf64::from(x_range.0..x_range.1).key_points(X_LABELS);
    let y_ticks = RangedCoordf64::from(y_range.0..y_range.1).key_points(Y_LABELS);
    let x_fmt = TickFormat::for_ticks(&x_ticks);
    let y_fmt = TickFormat::for_ticks(&y_ticks);
    // The y label area must hold the widest tick label plus the rotated axis name; measuring
    // beats a fixed width, which either wastes space or clips "0.000125".
    let widest_y = y_ticks
        .iter()
        .map(|v| text_size(&y_fmt.format(*v), TICK_FONT).map(|(w, _)| w))
        .collect::<DrawResult<Vec<u32>>>()?
        .into_iter()
        .max()
        .unwrap_or(0);
    let y_area = widest_y + 12 + if y_label.is_empty() { 0 } else { 24 };
    let x_area = 24 + if x_label.is_empty() { 0 } else { 20 };

    let mut builder = ChartBuilder::on(root);
    builder
        .margin(12)
        .margin_right(20)
        .x_label_area_size(x_area)
        .y_label_area_size(y_area);
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

    let mut any_named = false;
    for (i, (s, points)) in series.iter().zip(&cleaned).enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        // `Color::` because the backend trait in scope has a `stroke_width` too.
        let line = Color::stroke_width(&color, 2);
        let annotation = chart.draw_series(LineSeries::new(points.iter().copied(), line))?;
        if !s.name.is_empty() {
            any_named = true;
            let label = if points.is_empty() {
                format!("{} (no data)", s.name)
            } else {
                s.name.clone()
            };
            annotation
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], line));
        }
        // Sparse series (a metric at a few checkpoints, or a single point, which a line cannot
        // show) get markers so each measurement is visible.
        if points.len() <= 30 {
            chart.draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
        }
    }

    if !has_data {
        let area = chart.plotting_area();
        let (w, h) = area.dim_in_pixel();
        let centre = (w as i32 / 2, h as i32 / 2);
        let anchor = Pos::new(HPos::Center, VPos::Center);
        draw_label(
            &area.strip_coord_spec(),
            "no data",
            AXIS_FONT,
            &RGBColor(120, 120, 120),
            anchor,
            Direction::Level,
            centre,
        )?;
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
fn legend_corner(
    series: &[Vec<(f64, f64)>],
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
) -> SeriesLabelPosition {
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
        let unit: Vec<(f64, f64)> = points
            .iter()
            .map(|(x, y)| ((x - x0) / (x1 - x0), (y - y0) / (y1 - y0)))
            .collect();
        if let [only] = unit.as_slice() {
            count(only.0, only.1);
        }
        // Sample along each segment too: two far-apart points can draw a line through a corner.
        for w in unit.windows(2) {
            for k in 0..8 {
                let t = k as f64 / 8.0;
                count(
                    w[0].0 + (w[1].0 - w[0].0) * t,
                    w[0].1 + (w[1].1 - w[0].1) * t,
                );
            }
        }
        if let Some(last) = unit.last().filter(|_| unit.len() > 1) {
            count(last.0, last.1);
        }
    }
    let best = (0..4).min_by_key(|&k| counts[k]).unwrap_or(0);
    corners[best].0.clone()
}

// ---------------------------------------------------------------------------------------------
// Confusion matrix

const MARGIN: i32 = 16;
const BAR_WIDTH: i32 = 14;

/// Where each part of the confusion-matrix picture goes; computed before drawing because the
/// picture's size depends on the labels' measured widths.
#[derive(Debug)]
struct MatrixLayout {
    width: u32,
    height: u32,
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
    fn new(n: usize, labels: &[String], title: &str) -> DrawResult<Self> {
        let n_i = i32::try_from(n)?;
        // Cells as large as reads well for 10 classes, shrinking to fit a bounded picture: about
        // 600 px of grid up to 30 classes, 1000 px past 50.
        let cell = if n <= 50 {
            (600 / n_i).clamp(20, 56)
        } else {
            (1000 / n_i).max(2)
        };
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
        let title_h = if title.is_empty() {
            0
        } else {
            i32::try_from(text_size(title, TITLE_FONT)?.1)?
        };
        let title_w = if title.is_empty() {
            0
        } else {
            i32::try_from(text_size(title, TITLE_FONT)?.0)?
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
    let t = if fraction.is_finite() {
        fraction.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let scaled = t * (BLUES.len() - 1) as f64;
    let i = (scaled.floor() as usize).min(BLUES.len() - 2);
    let f = scaled - i as f64;
    let mix = |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * f).round() as u8;
    let (a, b) = (BLUES[i], BLUES[i + 1]);
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

fn draw_confusion_matrix(
    root: &Area<'_>,
    layout: &MatrixLayout,
    matrix: &[Vec<u64>],
    labels: &[String],
    title: &str,
) -> DrawResult<()> {
    let n = i32::try_from(matrix.len())?;
    let c = layout.cell;
    let (gx, gy) = layout.grid;
    let side = c * n;
    let none = Direction::Level;

    if !title.is_empty() {
        let anchor = Pos::new(HPos::Center, VPos::Top);
        draw_label(
            root,
            title,
            TITLE_FONT,
            &TEXT,
            anchor,
            none,
            (layout.width as i32 / 2, layout.title_y),
        )?;
    }

    // Counts at most a few digits wide fit at this size; shrink per cell when a count does not.
    let count_font = (f64::from(c) * 0.38).min(14.0);
    for (r, row) in matrix.iter().enumerate() {
        // u128: a row of u64 counts cannot overflow it.
        let total: u128 = row.iter().map(|&v| u128::from(v)).sum();
        for (col, &count) in row.iter().enumerate() {
            let fraction = if total == 0 {
                0.0
            } else {
                count as f64 / total as f64
            };
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
            root.draw(&PathElement::new(
                vec![(gx + p, gy), (gx + p, gy + side)],
                GRID,
            ))?;
            root.draw(&PathElement::new(
                vec![(gx, gy + p), (gx + side, gy + p)],
                GRID,
            ))?;
        }
    }
    root.draw(&Rectangle::new(
        [(gx, gy), (gx + side, gy + side)],
        RGBColor(90, 90, 90),
    ))?;

    if layout.show_labels {
        let lf = layout.label_font;
        for (k, label) in labels.iter().enumerate() {
            let label = shorten(label);
            let mid = c * i32::try_from(k)? + c / 2;
            let row_anchor = Pos::new(HPos::Right, VPos::Center);
            draw_label(
                root,
                &label,
                lf,
                &TEXT,
                row_anchor,
                none,
                (gx - 8, gy + mid),
            )?;
            if layout.rotate_columns {
                // Reads bottom to top, ending just under the grid.
                let anchor = Pos::new(HPos::Right, VPos::Center);
                draw_label(
                    root,
                    &label,
                    lf,
                    &TEXT,
                    anchor,
                    Direction::Upward,
                    (gx + mid, gy + side + 8),
                )?;
            } else {
                let anchor = Pos::new(HPos::Center, VPos::Top);
                draw_label(
                    root,
                    &label,
                    lf,
                    &TEXT,
                    anchor,
                    none,
                    (gx + mid, gy + side + 8),
                )?;
            }
        }
    }

    // Axis names: "asked" reads upwards left of the row labels, "predicted" sits under the columns.
    let axis_anchor = Pos::new(HPos::Center, VPos::Center);
    draw_label(
        root,
        "predicted",
        AXIS_FONT,
        &TEXT,
        axis_anchor,
        none,
        (gx + side / 2, layout.predicted_y),
    )?;
    draw_label(
        root,
        "asked",
        AXIS_FONT,
        &TEXT,
        axis_anchor,
        Direction::Upward,
        (layout.asked_x, gy + side / 2),
    )?;

    draw_colour_bar(root, layout.bar_x, gy, side)
}

/// Writes `count` centred in its cell, in white on dark cells; zero counts are drawn faint so the
/// eye goes to the cells that matter.
fn draw_count(
    root: &Area<'_>,
    count: u64,
    fraction: f64,
    size: f64,
    cell: i32,
    (x, y): (i32, i32),
) -> DrawResult<()> {
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
    draw_label(
        root,
        &text,
        size,
        &color,
        anchor,
        Direction::Level,
        (x + cell / 2, y + cell / 2),
    )
}

/// A vertical bar from 0% (bottom) to 100% (top) of a row, beside the grid.
fn draw_colour_bar(root: &Area<'_>, x: i32, top: i32, height: i32) -> DrawResult<()> {
    for k in 0..height {
        let fraction = 1.0 - f64::from(k) / f64::from((height - 1).max(1));
        root.draw(&PathElement::new(
            vec![(x, top + k), (x + BAR_WIDTH, top + k)],
            blues(fraction),
        ))?;
    }
    root.draw(&Rectangle::new(
        [(x, top), (x + BAR_WIDTH, top + height)],
        RGBColor(90, 90, 90),
    ))?;
    let anchor = Pos::new(HPos::Left, VPos::Center);
    for (fraction, text) in [(1.0, "100%"), (0.5, "50%"), (0.0, "0%")] {
        let y = top + ((1.0 - fraction) * f64::from(height - 1)).round() as i32;
        root.draw(&PathElement::new(
            vec![(x + BAR_WIDTH, y), (x + BAR_WIDTH + 3, y)],
            RGBColor(90, 90, 90),
        ))?;
        draw_label(
            root,
            text,
            TICK_FONT,
            &TEXT,
            anchor,
            Direction::Level,
            (x + BAR_WIDTH + 6, y),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn decode(path: &Path) -> image::RgbImage {
        image::open(path).unwrap().to_rgb8()
    }

    fn distinct_colours(img: &image::RgbImage) -> usize {
        img.pixels().map(|p| p.0).collect::<HashSet<_>>().len()
    }

    fn series(name: &str, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.to_string(),
            points,
        }
    }

    fn loss_curves() -> Vec<Series> {
        let train = (0..200)
            .map(|s| {
                (
                    f64::from(s) * 10.0,
                    1.0 / (1.0 + f64::from(s) * 0.05) + 0.02,
                )
            })
            .collect();
        let val = (0..10)
            .map(|s| {
                (
                    f64::from(s) * 200.0,
                    1.1 / (1.0 + f64::from(s) * 10.0 * 0.05) + 0.05,
                )
            })
            .collect();
        vec![
            series("training loss", train),
            series("validation loss", val),
        ]
    }

    #[test]
    fn line_chart_is_a_png_of_the_stated_size_with_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        line_chart_png(&path, "Loss", "step", "loss", &loss_curves()).unwrap();
        let img = decode(&path);
        assert_eq!(img.dimensions(), LINE_CHART_SIZE);
        assert!(distinct_colours(&img) > 2);
    }

    #[test]
    fn degenerate_series_do_not_panic() {
        let dir = tempfile::tempdir().unwrap();
        let cases: Vec<Vec<Series>> = vec![
            vec![],
            vec![series("empty", vec![])],
            vec![series("one point", vec![(3.0, 0.5)])],
            vec![series("flat", vec![(0.0, 2.0), (1.0, 2.0), (2.0, 2.0)])],
            vec![series("zeros", vec![(0.0, 0.0), (0.0, 0.0)])],
            vec![series(
                "non-finite",
                vec![
                    (f64::NAN, 1.0),
                    (1.0, f64::INFINITY),
                    (2.0, f64::NEG_INFINITY),
                ],
            )],
            vec![
                series("mixed", vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 0.5)]),
                series("", vec![(1.0, 0.7)]),
            ],
            vec![series(
                "huge",
                vec![(0.0, 1e300), (1.0, -1e300), (2.0, f64::MAX)],
            )],
            vec![series("tiny", vec![(0.0, 1e-30), (1.0, 2e-30)])],
            vec![series("big steps", vec![(1e7, 3.0), (2e7, 1.0)])],
            vec![series(
                "close",
                vec![(1e12, 1.0), (1e12 + 1.0, 1.0 + 1e-12)],
            )],
        ];
        for (i, s) in cases.iter().enumerate() {
            let path = dir.path().join(format!("case{i}.png"));
            line_chart_png(&path, "", "", "", s).unwrap();
            let img = decode(&path);
            assert_eq!(img.dimensions(), LINE_CHART_SIZE, "case {i}");
            assert!(distinct_colours(&img) > 2, "case {i}");
        }
    }

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

    fn digits_matrix() -> (Vec<Vec<u64>>, Vec<String>) {
        let n = 10;
        let matrix = (0..n)
            .map(|r| {
                (0..n)
                    .map(|c| {
                        if r == c {
                            40 + r as u64 * 3
                        } else {
                            ((r * 7 + c * 3) % 5) as u64
                        }
                    })
                    .collect()
            })
            .collect();
        (matrix, (0..n).map(|k| k.to_string()).collect())
    }

    #[test]
    fn confusion_matrix_is_a_png_with_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cm.png");
        let (matrix, labels) = digits_matrix();
        confusion_matrix_png(&path, &matrix, &labels, "Classes judged").unwrap();
        let img = decode(&path);
        let layout = MatrixLayout::new(10, &labels, "Classes judged").unwrap();
        assert_eq!(img.dimensions(), (layout.width, layout.height));
        assert!(
            img.width() >= 400 && img.width() <= 900,
            "{:?}",
            img.dimensions()
        );
        assert!(distinct_colours(&img) > 2);
    }

    #[test]
    fn confusion_matrix_handles_many_classes_and_long_names() {
        let dir = tempfile::tempdir().unwrap();
        for n in [1usize, 2, 50, 120] {
            let matrix: Vec<Vec<u64>> = (0..n)
                .map(|r| {
                    (0..n)
                        .map(|c| if r == c { 900 } else { (r + c) as u64 % 3 })
                        .collect()
                })
                .collect();
            let labels: Vec<String> = (0..n)
                .map(|k| format!("a rather long class name {k}"))
                .collect();
            let path = dir.path().join(format!("cm{n}.png"));
            confusion_matrix_png(&path, &matrix, &labels, "").unwrap();
            let img = decode(&path);
            assert!(
                img.width() <= 2000 && img.height() <= 2000,
                "{n}: {:?}",
                img.dimensions()
            );
            assert!(distinct_colours(&img) > 2);
        }
    }

    #[test]
    fn confusion_matrix_rejects_bad_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.png");
        let labels = vec!["a".to_string(), "b".to_string()];
        let not_square = vec![vec![1, 2], vec![3]];
        assert!(matches!(
            confusion_matrix_png(&path, &not_square, &labels, "t"),
            Err(EvalError::Input(_))
        ));
        let wide = vec![vec![1, 2, 3], vec![3, 4, 5]];
        assert!(matches!(
            confusion_matrix_png(&path, &wide, &labels, "t"),
            Err(EvalError::Input(_))
        ));
        let square = vec![vec![1, 2], vec![3, 4]];
        assert!(matches!(
            confusion_matrix_png(&path, &square, &labels[..1], "t"),
            Err(EvalError::Input(_))
        ));
        assert!(matches!(
            confusion_matrix_png(&path, &[], &[], "t"),
            Err(EvalError::Input(_))
        ));
        assert!(!path.exists());
    }

    #[test]
    fn unwritable_path_is_a_write_error() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let path = blocker.join("plot.png");
        let err = line_chart_png(&path, "t", "x", "y", &loss_curves()).unwrap_err();
        assert!(matches!(err, EvalError::Write { .. }), "{err}");
    }

    /// Writes the example pictures for a person to look at: `PLOT_EXAMPLES=/some/dir cargo test`.
    #[test]
    fn write_examples_when_asked() {
        let Some(dir) = std::env::var_os("PLOT_EXAMPLES") else {
            return;
        };
        let dir = Path::new(&dir);
        line_chart_png(
            &dir.join("loss.png"),
            "Training loss",
            "step",
            "loss",
            &loss_curves(),
        )
        .unwrap();
        let metric = vec![series(
            "class accuracy",
            vec![
                (500.0, 0.31),
                (1000.0, 0.62),
                (1500.0, 0.78),
                (2000.0, 0.84),
                (2500.0, 0.86),
            ],
        )];
        line_chart_png(
            &dir.join("metric.png"),
            "Accuracy by checkpoint",
            "step",
            "judged as asked",
            &metric,
        )
        .unwrap();
        let (matrix, labels) = digits_matrix();
        confusion_matrix_png(
            &dir.join("confusion.png"),
            &matrix,
            &labels,
            "Classes judged (200 samples)",
        )
        .unwrap();
        let names = [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ];
        let labels: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        confusion_matrix_png(
            &dir.join("confusion-names.png"),
            &matrix,
            &labels,
            "CIFAR-10 classes",
        )
        .unwrap();
        let few = vec![
            series("one point", vec![(3.0, 0.5)]),
            series("empty", vec![]),
        ];
        line_chart_png(
            &dir.join("degenerate.png"),
            "One point and an empty series",
            "step",
            "value",
            &few,
        )
        .unwrap();
        line_chart_png(&dir.join("nothing.png"), "Nothing yet", "step", "loss", &[]).unwrap();
        let tiny = vec![series(
            "learning rate",
            (0..50)
                .map(|k| {
                    (
                        f64::from(k) * 2e5,
                        1e-4 * (1.0 + f64::from(k) / 10.0).recip(),
                    )
                })
                .collect(),
        )];
        line_chart_png(
            &dir.join("scientific.png"),
            "Learning rate",
            "step",
            "lr",
            &tiny,
        )
        .unwrap();
        let n = 50;
        let big: Vec<Vec<u64>> = (0..n)
            .map(|r| {
                (0..n)
                    .map(|c| {
                        if r == c {
                            180
                        } else {
                            ((r * 7 + c * 3) % 4) as u64
                        }
                    })
                    .collect()
            })
            .collect();
        let labels: Vec<String> = (0..n).map(|k| format!("class {k}")).collect();
        confusion_matrix_png(&dir.join("confusion-50.png"), &big, &labels, "50 classes").unwrap();
    }
}
