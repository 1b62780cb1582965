//! PNG plots for reports: line charts (loss over steps, a metric over checkpoints, the loss per
//! noise level) and confusion-matrix heat maps.
//!
//! Text is drawn with DejaVu Sans embedded in the library (`assets/`), so plots look the same on
//! every machine and no system font lookup (fontconfig) is needed. The font is registered with
//! plotters' `ab_glyph` feature (plotters measures legend text with it), but glyphs are placed by
//! `text::TextBackend`: plotters 0.3.7's own ab_glyph drawing ignores each glyph's side bearing
//! and puts the baseline half a size below the anchor, which garbles digits ("1" runs into its
//! neighbours) and lifts centred text. Plots are rendered into an RGB buffer in memory, encoded
//! as PNG with `image`, and written atomically, so a report never links a half-written picture.

mod confusion;
mod line_chart;
mod scatter;
mod text;

use std::error::Error as StdError;
use std::io::Cursor;
use std::path::Path;
use std::sync::OnceLock;

use ab_glyph::FontRef;
use plotters::backend::RGBPixel;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::ReportError;
use confusion::{draw_confusion_matrix, MatrixLayout};
use line_chart::draw_line_chart;
use scatter::draw_scatter;
use text::TextBackend;

/// One line of a line chart: a legend name and its (x, y) points, drawn in the order given.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
/// plotters' own defaults (legend, mesh) ask for this family, so registering the embedded font
/// under it makes every piece of text use it.
const FONT_FAMILY: &str = "sans-serif";

const LINE_CHART_SIZE: (u32, u32) = (640, 400);
/// More classes than this would make a picture tens of thousands of pixels wide.
const MAX_CLASSES: usize = 2000;
/// Labels longer than this are cut with an ellipsis so one long class name cannot squeeze the grid.
const MAX_LABEL_CHARS: usize = 18;

// Text and grid colours and font sizes, shared by both kinds of plot so that they look alike.
const TEXT: RGBColor = RGBColor(30, 30, 30);
const GRID: RGBColor = RGBColor(225, 225, 225);
const TICK_FONT: f64 = 13.0;
const AXIS_FONT: f64 = 15.0;
const TITLE_FONT: f64 = 20.0;

type DrawResult<T> = Result<T, Box<dyn StdError + Send + Sync>>;

/// Draws one line per series, with a legend, into a 640x400 PNG at `path`.
///
/// Axis ranges come from the data, padded; non-finite points (and magnitudes beyond 1e300, which
/// no axis can span) are skipped. Empty series, a single point and constant values still give a
/// valid picture (an empty chart says "no data").
pub fn line_chart_png(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<(), ReportError> {
    plot_png(path, LINE_CHART_SIZE, |root| draw_line_chart(root, title, x_label, y_label, series))
}

/// Draws labelled points (x, y, label) into a 640x400 PNG at `path`; non-finite points are left out.
pub fn scatter_png(path: &Path, title: &str, x_label: &str, y_label: &str, points: &[(f64, f64, String)]) -> Result<(), ReportError> {
    plot_png(path, LINE_CHART_SIZE, |root| draw_scatter(root, title, x_label, y_label, points))
}

/// Draws a confusion matrix as a heat map into a PNG at `path`: rows are the class asked for,
/// columns the class predicted; each cell is coloured by its fraction of the row and shows its
/// count. The picture grows with the number of classes (about 700 px wide for 10 classes).
///
/// Errors with [`ReportError::Input`] when the matrix is empty or not square, when `labels` does not
/// name each class once, or when there are more than 2000 classes.
pub fn confusion_matrix_png(path: &Path, matrix: &[Vec<u64>], labels: &[String], title: &str) -> Result<(), ReportError> {
    let n = matrix.len();
    if n == 0 {
        return Err(ReportError::Input("confusion matrix is empty".into()));
    }
    if let Some((i, row)) = matrix.iter().enumerate().find(|(_, row)| row.len() != n) {
        return Err(ReportError::Input(format!("confusion matrix is not square: {n} rows but row {i} has {} columns", row.len())));
    }
    if labels.len() != n {
        return Err(ReportError::Input(format!("confusion matrix has {n} classes but {} labels were given", labels.len())));
    }
    if n > MAX_CLASSES {
        return Err(ReportError::Input(format!("cannot plot a confusion matrix of {n} classes (at most {MAX_CLASSES})")));
    }
    let layout = MatrixLayout::new(n, labels, title).map_err(|e| draw_error(path, e.as_ref()))?;
    plot_png(path, (layout.width, layout.height), |root| draw_confusion_matrix(root, &layout, matrix, labels, title))
}

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

/// Renders with `draw` into a `w`x`h` picture and writes it to `path` as a PNG.
fn plot_png(path: &Path, (w, h): (u32, u32), draw: impl FnOnce(&Area<'_>) -> DrawResult<()>) -> Result<(), ReportError> {
    let buf = render(w, h, draw).map_err(|e| draw_error(path, e.as_ref()))?;
    write_png(path, w, h, buf)
}

/// Renders with `draw` into a white `w`x`h` RGB buffer and returns the buffer.
fn render(w: u32, h: u32, draw: impl FnOnce(&Area<'_>) -> DrawResult<()>) -> DrawResult<Vec<u8>> {
    let font = embedded_font()?;
    let mut buf = vec![0u8; w as usize * h as usize * 3];
    {
        let inner = BitMapBackend::<RGBPixel>::with_buffer_and_format(&mut buf, (w, h))?;
        let root = TextBackend::new(inner, font).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    Ok(buf)
}

fn write_png(path: &Path, w: u32, h: u32, rgb: Vec<u8>) -> Result<(), ReportError> {
    let write_error = |reason: String| ReportError::Write { path: path.to_path_buf(), reason };
    let image = image::RgbImage::from_raw(w, h, rgb).ok_or_else(|| write_error("plot buffer has the wrong size".into()))?;
    let mut png = Cursor::new(Vec::new());
    image.write_to(&mut png, image::ImageFormat::Png).map_err(|e| write_error(format!("cannot encode PNG: {e}")))?;
    difforge_core::atomic::write_atomic(path, png.get_ref()).map_err(|e| write_error(e.to_string()))
}

fn draw_error(path: &Path, e: &(dyn StdError + Send + Sync)) -> ReportError {
    ReportError::Write { path: path.to_path_buf(), reason: format!("cannot draw the plot: {e}") }
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
        Series { name: name.to_string(), points }
    }

    fn loss_curves() -> Vec<Series> {
        let train = (0..200).map(|s| (f64::from(s) * 10.0, 1.0 / (1.0 + f64::from(s) * 0.05) + 0.02)).collect();
        let val = (0..10).map(|s| (f64::from(s) * 200.0, 1.1 / (1.0 + f64::from(s) * 10.0 * 0.05) + 0.05)).collect();
        vec![series("training loss", train), series("validation loss", val)]
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
            vec![series("non-finite", vec![(f64::NAN, 1.0), (1.0, f64::INFINITY), (2.0, f64::NEG_INFINITY)])],
            vec![series("mixed", vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 0.5)]), series("", vec![(1.0, 0.7)])],
            vec![series("huge", vec![(0.0, 1e300), (1.0, -1e300), (2.0, f64::MAX)])],
            vec![series("tiny", vec![(0.0, 1e-30), (1.0, 2e-30)])],
            vec![series("big steps", vec![(1e7, 3.0), (2e7, 1.0)])],
            vec![series("close", vec![(1e12, 1.0), (1e12 + 1.0, 1.0 + 1e-12)])],
        ];
        for (i, s) in cases.iter().enumerate() {
            let path = dir.path().join(format!("case{i}.png"));
            line_chart_png(&path, "", "", "", s).unwrap();
            let img = decode(&path);
            assert_eq!(img.dimensions(), LINE_CHART_SIZE, "case {i}");
            assert!(distinct_colours(&img) > 2, "case {i}");
        }
    }

    fn digits_matrix() -> (Vec<Vec<u64>>, Vec<String>) {
        let n = 10;
        let matrix = (0..n).map(|r| (0..n).map(|c| if r == c { 40 + r as u64 * 3 } else { ((r * 7 + c * 3) % 5) as u64 }).collect()).collect();
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
        assert!(img.width() >= 400 && img.width() <= 900, "{:?}", img.dimensions());
        assert!(distinct_colours(&img) > 2);
    }

    #[test]
    fn confusion_matrix_handles_many_classes_and_long_names() {
        let dir = tempfile::tempdir().unwrap();
        for n in [1usize, 2, 50, 120] {
            let matrix: Vec<Vec<u64>> = (0..n).map(|r| (0..n).map(|c| if r == c { 900 } else { (r + c) as u64 % 3 }).collect()).collect();
            let labels: Vec<String> = (0..n).map(|k| format!("a rather long class name {k}")).collect();
            let path = dir.path().join(format!("cm{n}.png"));
            confusion_matrix_png(&path, &matrix, &labels, "").unwrap();
            let img = decode(&path);
            assert!(img.width() <= 2000 && img.height() <= 2000, "{n}: {:?}", img.dimensions());
            assert!(distinct_colours(&img) > 2);
        }
    }

    #[test]
    fn confusion_matrix_rejects_bad_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.png");
        let labels = vec!["a".to_string(), "b".to_string()];
        let not_square = vec![vec![1, 2], vec![3]];
        assert!(matches!(confusion_matrix_png(&path, &not_square, &labels, "t"), Err(ReportError::Input(_))));
        let wide = vec![vec![1, 2, 3], vec![3, 4, 5]];
        assert!(matches!(confusion_matrix_png(&path, &wide, &labels, "t"), Err(ReportError::Input(_))));
        let square = vec![vec![1, 2], vec![3, 4]];
        assert!(matches!(confusion_matrix_png(&path, &square, &labels[..1], "t"), Err(ReportError::Input(_))));
        assert!(matches!(confusion_matrix_png(&path, &[], &[], "t"), Err(ReportError::Input(_))));
        assert!(!path.exists());
    }

    #[test]
    fn unwritable_path_is_a_write_error() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let path = blocker.join("plot.png");
        let err = line_chart_png(&path, "t", "x", "y", &loss_curves()).unwrap_err();
        assert!(matches!(err, ReportError::Write { .. }), "{err}");
    }

    /// Draws every kind of example picture (also the awkward ones) and checks each is a PNG with
    /// content. To look at them, run with PLOT_EXAMPLES=/some/dir: they are kept there.
    #[test]
    fn example_pictures_render() {
        let tmp = tempfile::tempdir().unwrap();
        let kept = std::env::var_os("PLOT_EXAMPLES").map(std::path::PathBuf::from);
        let dir = kept.as_deref().unwrap_or(tmp.path());
        line_chart_png(&dir.join("loss.png"), "Training loss", "step", "loss", &loss_curves()).unwrap();
        let metric = vec![series("class accuracy", vec![(500.0, 0.31), (1000.0, 0.62), (1500.0, 0.78), (2000.0, 0.84), (2500.0, 0.86)])];
        line_chart_png(&dir.join("metric.png"), "Accuracy by checkpoint", "step", "judged as asked", &metric).unwrap();
        let (matrix, labels) = digits_matrix();
        confusion_matrix_png(&dir.join("confusion.png"), &matrix, &labels, "Classes judged (200 samples)").unwrap();
        let names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
        let labels: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        confusion_matrix_png(&dir.join("confusion-names.png"), &matrix, &labels, "CIFAR-10 classes").unwrap();
        let settings: Vec<(f64, f64, String)> =
            [(0.78, 0.44, "g3"), (0.88, 0.61, "g3 (0.5, 3.1]"), (0.91, 0.49, "g4 (0.28, 5.3]")].iter().map(|(x, y, l)| (*x, *y, l.to_string())).collect();
        scatter_png(&dir.join("scatter.png"), "Precision and recall per setting", "precision", "recall", &settings).unwrap();
        let few = vec![series("one point", vec![(3.0, 0.5)]), series("empty", vec![])];
        line_chart_png(&dir.join("degenerate.png"), "One point and an empty series", "step", "value", &few).unwrap();
        line_chart_png(&dir.join("nothing.png"), "Nothing yet", "step", "loss", &[]).unwrap();
        let tiny = vec![series("learning rate", (0..50).map(|k| (f64::from(k) * 2e5, 1e-4 * (1.0 + f64::from(k) / 10.0).recip())).collect())];
        line_chart_png(&dir.join("scientific.png"), "Learning rate", "step", "lr", &tiny).unwrap();
        let n = 50;
        let big: Vec<Vec<u64>> = (0..n).map(|r| (0..n).map(|c| if r == c { 180 } else { ((r * 7 + c * 3) % 4) as u64 }).collect()).collect();
        let labels: Vec<String> = (0..n).map(|k| format!("class {k}")).collect();
        confusion_matrix_png(&dir.join("confusion-50.png"), &big, &labels, "50 classes").unwrap();
        for name in ["loss", "metric", "confusion", "confusion-names", "degenerate", "nothing", "scientific", "confusion-50", "scatter"] {
            let img = decode(&dir.join(format!("{name}.png")));
            assert!(distinct_colours(&img) > 2, "{name}.png has no content");
        }
    }
}
