//! Text in plots: line layout with ab_glyph and the bitmap backend wrapper that draws it.

use ab_glyph::{Font, FontRef, Glyph, PxScale, ScaleFont};
use plotters::backend::RGBPixel;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontTransform;
use plotters_backend::{BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingErrorKind};

use super::{embedded_font, font, Area, DrawResult};

/// One line of text laid out at the origin: glyphs on a baseline at `ascent`, so the line's box
/// runs from (0, 0) to (`width`, `height`) like plotters' layout boxes.
struct TextLine {
    glyphs: Vec<Glyph>,
    width: f32,
    height: f32,
}

impl TextLine {
    /// The line's box in whole pixels, rounded up so space reserved for it never clips a glyph.
    /// Plot layout ([`text_size`]) and plotters' own layout (legends, through the backend) both
    /// measure with this, so they agree with each other.
    fn size(&self) -> (u32, u32) {
        (self.width.ceil() as u32, self.height.ceil() as u32)
    }
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
    TextLine { glyphs, width: pen, height: scaled.height() }
}

/// How a piece of text runs: level, or rotated to read from bottom to top (axis names, crowded
/// column labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    Level,
    Upward,
}

/// Draws `text` in the embedded font with its `anchor` point at `pos`.
pub(super) fn draw_label(area: &Area<'_>, text: &str, size: f64, color: &RGBColor, anchor: Pos, direction: Direction, pos: (i32, i32)) -> DrawResult<()> {
    let transform = match direction {
        Direction::Level => FontTransform::None,
        Direction::Upward => FontTransform::Rotate270,
    };
    let style = font(size).transform(transform).color(color).pos(anchor);
    area.draw_text(text, &style, pos)?;
    Ok(())
}

/// Width and height of `text` in pixels at `size`, as [`TextBackend`] will draw it.
pub(super) fn text_size(text: &str, size: f64) -> DrawResult<(u32, u32)> {
    Ok(layout(embedded_font()?, text, size).size())
}

/// The bitmap backend with text drawn by [`layout`]: glyphs at their true outline positions
/// (sub-pixel pen, side bearings, kerning) and anchors measured on the ascent-to-descent box.
/// Everything else goes to the bitmap backend unchanged.
pub(super) struct TextBackend<'a> {
    inner: BitMapBackend<'a, RGBPixel>,
    font: &'static FontRef<'static>,
}

impl<'a> TextBackend<'a> {
    pub(super) fn new(inner: BitMapBackend<'a, RGBPixel>, font: &'static FontRef<'static>) -> Self {
        TextBackend { inner, font }
    }
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
    fn draw_line<S: BackendStyle>(&mut self, from: BackendCoord, to: BackendCoord, style: &S) -> BackendResult {
        self.inner.draw_line(from, to, style)
    }
    fn draw_rect<S: BackendStyle>(&mut self, upper_left: BackendCoord, bottom_right: BackendCoord, style: &S, fill: bool) -> BackendResult {
        self.inner.draw_rect(upper_left, bottom_right, style, fill)
    }
    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(&mut self, path: I, style: &S) -> BackendResult {
        self.inner.draw_path(path, style)
    }
    fn draw_circle<S: BackendStyle>(&mut self, center: BackendCoord, radius: u32, style: &S, fill: bool) -> BackendResult {
        self.inner.draw_circle(center, radius, style, fill)
    }
    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(&mut self, vert: I, style: &S) -> BackendResult {
        self.inner.fill_polygon(vert, style)
    }
    fn blit_bitmap(&mut self, pos: BackendCoord, size: (u32, u32), src: &[u8]) -> BackendResult {
        self.inner.blit_bitmap(pos, size, src)
    }

    fn estimate_text_size<S: BackendTextStyle>(&self, text: &str, style: &S) -> BackendResult<(u32, u32)> {
        Ok(layout(self.font, text, style.size()).size())
    }

    fn draw_text<S: BackendTextStyle>(&mut self, text: &str, style: &S, pos: BackendCoord) -> BackendResult {
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
                        coverage.push((transform.transform(bx + x as i32, by + y as i32), c.min(1.0)));
                    }
                });
            }
        }
        let (width, height) = self.get_size();
        for ((x, y), c) in coverage {
            let (x, y) = (pos.0 + x, pos.1 + y);
            if x >= 0 && y >= 0 && (x as u32) < width && (y as u32) < height {
                let alpha = color.alpha * f64::from(c);
                self.inner.draw_pixel((x, y), BackendColor { alpha, rgb: color.rgb })?;
            }
        }
        Ok(())
    }
}
