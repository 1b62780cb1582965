//! The shape judge: does an image show what its caption asks for? For the synthetic shapes set
//! (`difforge data synth shapes`) and for a text-to-image model's samples of its prompts, it reads
//! the colour, kind, size and position of the one shape and the background from the pixels alone,
//! and scores them against the caption's words.
//!
//! Pixel analysis, in order: the background is the border's colour; the shape is the largest
//! connected region far from it; its colour is the nearest palette colour of the region's inner
//! half; each pixel's coverage is its projection onto the background-to-colour line (which blur
//! and zero-mean noise leave summing to the shape's area); the kind is the one whose outline, drawn
//! with that area and centroid, fits the coverage best (sharp or slightly blurred); size and
//! position follow from the area and centre of that outline.

use difforge_data::synth::attributes::Named;
use difforge_data::synth::raster::{area_factor, centroid_offset, coverage, Placement};
use difforge_data::synth::{Background, Colour, Combo, Kind, Position, Shape, Size};
use image::RgbImage;
use serde::Serialize;

/// A pixel belongs to the shape when its colour is this far (RGB distance) from the background,
/// and at least half as far as the farthest pixel: above the reach of mild noise, below any
/// palette colour's distance from any background.
const MIN_FOREGROUND_DISTANCE: f32 = 50.0;
/// Pixels around the shape's region that still count towards its coverage (blur and
/// anti-aliasing spread an edge by about a pixel each).
const WINDOW_MARGIN: usize = 3;
/// Border pixels farther than this from the border's median are not background (a shape touching
/// the edge).
const BORDER_OUTLIER: f32 = 40.0;
/// Judgements kept in a report as examples of mistakes.
const MISTAKES_KEPT: usize = 50;

/// What a caption names; attributes it does not name are `None` and not judged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ShapeSpec {
    pub kind: Option<Kind>,
    pub colour: Option<Colour>,
    pub size: Option<Size>,
    pub position: Option<Position>,
    pub background: Option<Background>,
}

impl ShapeSpec {
    pub fn combo(&self) -> Option<Combo> {
        Some(Combo { colour: self.colour?, kind: self.kind? })
    }

    fn is_empty(&self) -> bool {
        *self == ShapeSpec::default()
    }
}

impl From<Shape> for ShapeSpec {
    fn from(s: Shape) -> ShapeSpec {
        ShapeSpec { kind: Some(s.kind), colour: Some(s.colour), size: Some(s.size), position: Some(s.position), background: Some(s.background) }
    }
}

/// Words of other spellings read as the generator's.
fn canonical(word: &str) -> &str {
    match word {
        "centre" | "middle" | "centered" | "centred" => "center",
        "gray" => "grey",
        "big" => "large",
        "upper" => "top",
        "lower" => "bottom",
        "violet" => "purple",
        _ => word,
    }
}

fn first<T: Named>(words: &[&str]) -> Option<T> {
    words.iter().find_map(|w| T::from_name(w))
}

/// The cell named by "top", "bottom", "left", "right" and "center" words, if any.
fn position_of(words: &[&str]) -> Option<Position> {
    let row = words.iter().find_map(|w| match *w {
        "top" => Some(0),
        "bottom" => Some(2),
        _ => None,
    });
    let column = words.iter().find_map(|w| match *w {
        "left" => Some(0),
        "right" => Some(2),
        _ => None,
    });
    let center = words.contains(&"center");
    (row.is_some() || column.is_some() || center).then(|| Position::from_cell(column.unwrap_or(1), row.unwrap_or(1)))
}

/// The attributes a caption names ("a small red triangle at the top left on a white background",
/// or only some of them, "a red circle"); `None` when it names none.
pub fn parse_caption(caption: &str) -> Option<ShapeSpec> {
    let lower = caption.to_lowercase().replace(|c: char| !c.is_alphanumeric(), " ");
    let words: Vec<&str> = lower.split_whitespace().map(canonical).collect();
    // The background is the word before "background"; the shape's words come before it.
    let at = words.iter().position(|w| *w == "background");
    let background = at.and_then(|i| i.checked_sub(1)).and_then(|i| Background::from_name(words[i]));
    let shape_words = &words[..at.map_or(words.len(), |i| i.saturating_sub(1))];
    let spec = ShapeSpec { kind: first(shape_words), colour: first(shape_words), size: first(shape_words), position: position_of(shape_words), background };
    (!spec.is_empty()).then_some(spec)
}

/// What the judge sees in one image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Judgement {
    pub background: Background,
    /// The border's colour.
    pub background_rgb: [f32; 3],
    /// The shape's attributes; all `None` when no region stands out from the background.
    pub kind: Option<Kind>,
    pub colour: Option<Colour>,
    pub size: Option<Size>,
    pub position: Option<Position>,
    /// The mean colour of the shape's inner half.
    pub foreground_rgb: Option<[f32; 3]>,
    /// The shape's bounding box centre and half-extent, as fractions of the image side.
    pub centre: Option<(f64, f64)>,
    pub half_extent: Option<f64>,
    /// Squared coverage error of each kind's best outline (circle, square, triangle, diamond),
    /// over the shape's area: how clearly the kind won.
    pub kind_errors: Option<[f64; 4]>,
}

impl Judgement {
    /// The judgement in the captions' words ("nothing" for a missing shape).
    pub fn describe(&self) -> String {
        match (self.size, self.colour, self.kind, self.position) {
            (Some(size), Some(colour), Some(kind), Some(position)) => Shape { kind, colour, size, position, background: self.background }.caption(),
            _ => format!("nothing on a {} background", self.background.name()),
        }
    }

    /// Whether each attribute `spec` names is what was seen: (colour, kind, size, position, background).
    pub fn matches(&self, spec: &ShapeSpec) -> [Option<bool>; 5] {
        fn check<T: PartialEq>(asked: Option<T>, seen: Option<T>) -> Option<bool> {
            asked.map(|a| seen.is_some_and(|s| s == a))
        }
        [
            check(spec.colour, self.colour),
            check(spec.kind, self.kind),
            check(spec.size, self.size),
            check(spec.position, self.position),
            check(spec.background, Some(self.background)),
        ]
    }
}

/// An RGB image as f32 pixels, row by row.
struct Pixels {
    side_x: usize,
    side_y: usize,
    rgb: Vec<[f32; 3]>,
}

impl Pixels {
    fn of(img: &RgbImage) -> Pixels {
        let rgb = img.pixels().map(|p| [f32::from(p[0]), f32::from(p[1]), f32::from(p[2])]).collect();
        Pixels { side_x: img.width() as usize, side_y: img.height() as usize, rgb }
    }

    fn border(&self) -> Vec<[f32; 3]> {
        let (w, h) = (self.side_x, self.side_y);
        (0..w * h).filter(|i| i % w == 0 || i % w == w - 1 || i / w == 0 || i / w == h - 1).map(|i| self.rgb[i]).collect()
    }
}

fn distance(a: [f32; 3], b: [f32; 3]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

fn nearest<T: Named>(rgb: [f32; 3], palette: impl Fn(T) -> [u8; 3]) -> T {
    let d = |v: T| {
        let p = palette(v);
        distance(rgb, [f32::from(p[0]), f32::from(p[1]), f32::from(p[2])])
    };
    T::ALL.iter().copied().min_by(|a, b| d(*a).total_cmp(&d(*b))).unwrap_or(T::ALL[0])
}

fn mean(colours: &[[f32; 3]]) -> [f32; 3] {
    let n = colours.len().max(1) as f32;
    let sum = colours.iter().fold([0.0f32; 3], |s, c| [s[0] + c[0], s[1] + c[1], s[2] + c[2]]);
    [sum[0] / n, sum[1] / n, sum[2] / n]
}

/// The background colour: the mean of the border pixels near the border's per-channel median.
/// The median ignores a shape touching the edge; the mean, unlike the median, is not pulled by
/// noise clipped at 0 or 255, which would bias every coverage.
fn background_colour(px: &Pixels) -> [f32; 3] {
    let border = px.border();
    let median = |c: usize| {
        let mut v: Vec<f32> = border.iter().map(|p| p[c]).collect();
        v.sort_by(f32::total_cmp);
        v[v.len() / 2]
    };
    let m = [median(0), median(1), median(2)];
    let near: Vec<[f32; 3]> = border.iter().copied().filter(|p| distance(*p, m) <= BORDER_OUTLIER).collect();
    mean(&near)
}

/// The largest 8-connected region of `mask`, as pixel indices.
fn largest_region(mask: &[bool], w: usize, h: usize) -> Vec<usize> {
    let mut seen = vec![false; mask.len()];
    let mut best = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        let (mut region, mut stack) = (Vec::new(), vec![start]);
        while let Some(i) = stack.pop() {
            region.push(i);
            let (x, y) = (i % w, i / w);
            for ny in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                    let j = ny * w + nx;
                    if mask[j] && !seen[j] {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        if region.len() > best.len() {
            best = region;
        }
    }
    best
}

/// A rectangle of pixels: (x0, y0, width, height).
type Window = (usize, usize, usize, usize);

fn region_window(region: &[usize], w: usize, h: usize) -> Window {
    let xs = || region.iter().map(|i| i % w);
    let ys = || region.iter().map(|i| i / w);
    let (x0, x1) = (xs().min().unwrap_or(0).saturating_sub(WINDOW_MARGIN), (xs().max().unwrap_or(0) + WINDOW_MARGIN).min(w - 1));
    let (y0, y1) = (ys().min().unwrap_or(0).saturating_sub(WINDOW_MARGIN), (ys().max().unwrap_or(0) + WINDOW_MARGIN).min(h - 1));
    (x0, y0, x1 - x0 + 1, y1 - y0 + 1)
}

/// Each window pixel's coverage: how far along the line from `bg` to `fg` it lies. Not clipped
/// to 0..1, so that zero-mean noise cancels in sums.
fn coverage_map(px: &Pixels, (x0, y0, ww, wh): Window, bg: [f32; 3], fg: [f32; 3]) -> Vec<f32> {
    let dir = [fg[0] - bg[0], fg[1] - bg[1], fg[2] - bg[2]];
    let norm = (dir[0] * dir[0] + dir[1] * dir[1] + dir[2] * dir[2]).max(1.0);
    let mut out = Vec::with_capacity(ww * wh);
    for y in y0..y0 + wh {
        for x in x0..x0 + ww {
            let p = px.rgb[y * px.side_x + x];
            let dot = (p[0] - bg[0]) * dir[0] + (p[1] - bg[1]) * dir[1] + (p[2] - bg[2]) * dir[2];
            out.push((dot / norm).clamp(-0.5, 1.5));
        }
    }
    out
}

/// A 3x3 box blur of a window's values (edges averaged over the pixels that exist).
fn box_blur(values: &[f32], w: usize, h: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for y in 0..h {
        for x in 0..w {
            let (mut sum, mut n) = (0.0, 0.0);
            for ny in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                    sum += values[ny * w + nx];
                    n += 1.0;
                }
            }
            out[y * w + x] = sum / n;
        }
    }
    out
}

/// The outline of `kind` whose area and centroid are those of the coverage (in window pixels).
fn fitted_placement(kind: Kind, area: f64, centroid: (f64, f64), window: Window) -> Placement {
    let r = (area / area_factor(kind)).sqrt();
    Placement { cx: window.0 as f64 + centroid.0, cy: window.1 as f64 + centroid.1 - centroid_offset(kind) * r, half_extent: r }
}

/// The squared error between the coverage and the kind's fitted outline, sharp or blurred
/// (whichever fits better: generated images are often soft).
fn kind_error(kind: Kind, cover: &[f32], area: f64, centroid: (f64, f64), window: Window) -> f64 {
    let p = fitted_placement(kind, area, centroid, window);
    let sharp = coverage(kind, p, window.0, window.1, window.2, window.3);
    let soft = box_blur(&sharp, window.2, window.3);
    let err = |t: &[f32]| cover.iter().zip(t).map(|(a, b)| f64::from(a - b).powi(2)).sum::<f64>();
    err(&sharp).min(err(&soft))
}

/// Area and centroid (window pixels, from the window's top left corner) of a coverage map.
fn moments(cover: &[f32], w: usize) -> (f64, (f64, f64)) {
    let (mut a, mut sx, mut sy) = (0.0f64, 0.0f64, 0.0f64);
    for (i, &c) in cover.iter().enumerate() {
        let c = f64::from(c);
        a += c;
        sx += c * ((i % w) as f64 + 0.5);
        sy += c * ((i / w) as f64 + 0.5);
    }
    let a_safe = a.max(1e-9);
    (a, (sx / a_safe, sy / a_safe))
}

/// The shape's region: the largest connected set of pixels far from the background.
fn shape_region(px: &Pixels, bg: [f32; 3]) -> Vec<usize> {
    let d: Vec<f32> = px.rgb.iter().map(|p| distance(*p, bg)).collect();
    let farthest = d.iter().copied().fold(0.0f32, f32::max);
    let threshold = MIN_FOREGROUND_DISTANCE.max(0.5 * farthest);
    let mask: Vec<bool> = d.iter().map(|&v| v > threshold).collect();
    largest_region(&mask, px.side_x, px.side_y)
}

/// The mean colour of the half of the region farthest from the background (its edge pixels are
/// mixed with the background).
fn inner_colour(px: &Pixels, region: &[usize], bg: [f32; 3]) -> [f32; 3] {
    let mut by_distance: Vec<[f32; 3]> = region.iter().map(|&i| px.rgb[i]).collect();
    by_distance.sort_by(|a, b| distance(*b, bg).total_cmp(&distance(*a, bg)));
    mean(&by_distance[..by_distance.len().div_ceil(2)])
}

/// Judges one image (see the module documentation).
pub fn judge(img: &RgbImage) -> Judgement {
    let px = Pixels::of(img);
    let bg = background_colour(&px);
    let background = nearest(bg, Background::rgb);
    let mut judgement = Judgement {
        background,
        background_rgb: bg,
        kind: None,
        colour: None,
        size: None,
        position: None,
        foreground_rgb: None,
        centre: None,
        half_extent: None,
        kind_errors: None,
    };
    if px.side_x < 3 || px.side_y < 3 {
        return judgement;
    }
    let region = shape_region(&px, bg);
    if region.is_empty() {
        return judgement;
    }
    let fg = inner_colour(&px, &region, bg);
    let colour = nearest(fg, Colour::rgb);
    // Coverage along the palette colour: a shape drawn in a slightly different shade still covers
    // about its area, and an edge-blurred small shape (whose inner colour never reaches the
    // palette's) is not inflated.
    let target = colour.rgb().map(f32::from);
    let window = region_window(&region, px.side_x, px.side_y);
    let cover = coverage_map(&px, window, bg, target);
    let (area, centroid) = moments(&cover, window.2);
    if area <= 0.0 {
        return judgement;
    }
    let errors: Vec<f64> = Kind::ALL.iter().map(|&k| kind_error(k, &cover, area, centroid, window) / area).collect();
    let best = (0..errors.len()).min_by(|&a, &b| errors[a].total_cmp(&errors[b])).unwrap_or(0);
    let kind = Kind::ALL[best];
    let p = fitted_placement(kind, area, centroid, window);
    let side = px.side_x.max(px.side_y) as f64;
    let (cx, cy, r) = (p.cx / px.side_x as f64, p.cy / px.side_y as f64, p.half_extent / side);
    judgement.kind = Some(kind);
    judgement.colour = Some(colour);
    judgement.size = Some(Size::of_half_extent(r));
    judgement.position = Some(Position::of_point(cx, cy));
    judgement.foreground_rgb = Some(fg);
    judgement.centre = Some((cx, cy));
    judgement.half_extent = Some(r);
    judgement.kind_errors = Some([errors[0], errors[1], errors[2], errors[3]]);
    judgement
}

/// Generated images (N, 3, H, W) in [-1, 1] as the 8-bit pixels their PNGs would hold.
pub fn rgb_images(images: &tch::Tensor) -> Result<Vec<RgbImage>, tch::TchError> {
    let (n, c, h, w) = images.size4()?;
    if c != 3 {
        return Err(tch::TchError::Shape(format!("the judge reads RGB images, got {c} channels")));
    }
    let pixels = ((images.to_kind(tch::Kind::Float).clamp(-1.0, 1.0) + 1.0) * 127.5).round().to_kind(tch::Kind::Uint8).permute([0, 2, 3, 1]).contiguous();
    let bytes = Vec::<u8>::try_from(pixels.view([-1]))?;
    let per = (h * w * 3) as usize;
    Ok((0..n as usize).filter_map(|i| RgbImage::from_raw(w as u32, h as u32, bytes[i * per..(i + 1) * per].to_vec())).collect())
}

/// An image file as RGB (alpha dropped, grey expanded), for judging.
pub fn read_rgb(path: &std::path::Path) -> Result<RgbImage, crate::EvalError> {
    Ok(image::open(path).map_err(|e| crate::EvalError::read(path, e))?.to_rgb8())
}

/// How often one attribute was drawn as asked, among the captions that name it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct AttributeScore {
    pub named: usize,
    pub correct: usize,
}

impl AttributeScore {
    /// correct / named; `None` when no caption named the attribute.
    pub fn accuracy(&self) -> Option<f64> {
        (self.named > 0).then(|| self.correct as f64 / self.named as f64)
    }

    fn add(&mut self, result: Option<bool>) {
        if let Some(ok) = result {
            self.named += 1;
            self.correct += usize::from(ok);
        }
    }
}

/// The attributes in report order.
pub const ATTRIBUTES: [&str; 5] = ["colour", "kind", "size", "position", "background"];

/// Scores of a group of images.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GroupScores {
    pub images: usize,
    pub colour: AttributeScore,
    pub kind: AttributeScore,
    pub size: AttributeScore,
    pub position: AttributeScore,
    pub background: AttributeScore,
    /// Images with every attribute their caption names drawn as asked.
    pub all_correct: usize,
}

impl GroupScores {
    /// The attribute scores in [`ATTRIBUTES`] order.
    pub fn attributes(&self) -> [AttributeScore; 5] {
        [self.colour, self.kind, self.size, self.position, self.background]
    }

    /// The fraction of images with every named attribute right: prompt adherence.
    pub fn adherence(&self) -> Option<f64> {
        (self.images > 0).then(|| self.all_correct as f64 / self.images as f64)
    }

    fn add(&mut self, results: [Option<bool>; 5]) {
        self.images += 1;
        for (score, r) in [&mut self.colour, &mut self.kind, &mut self.size, &mut self.position, &mut self.background].into_iter().zip(results) {
            score.add(r);
        }
        self.all_correct += usize::from(results.iter().all(|r| r.unwrap_or(true)));
    }
}

/// An image judged different from its caption.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mistake {
    /// The item's index, in the order given.
    pub item: usize,
    pub caption: String,
    pub judged: String,
}

/// Prompt adherence of a set of captioned images.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AdherenceReport {
    /// Every image whose caption names at least one attribute.
    pub overall: GroupScores,
    /// With withheld combos given: images whose caption names a combo not withheld (or none).
    pub seen: Option<GroupScores>,
    /// With withheld combos given: images whose caption names a withheld combo.
    pub withheld: Option<GroupScores>,
    pub withheld_combos: Vec<Combo>,
    /// Captions that name no attribute (not judged).
    pub unparsed: usize,
    /// The first mistakes, in item order.
    pub mistakes: Vec<Mistake>,
}

/// Judges images one at a time into an [`AdherenceReport`] (so a folder need not be held in memory).
#[derive(Debug, Clone, Default)]
pub struct AdherenceTally {
    report: AdherenceReport,
    split: bool,
    items: usize,
}

impl AdherenceTally {
    /// `withheld`: the combos held out of training, to score separately; `None` for no split.
    pub fn new(withheld: Option<&[Combo]>) -> AdherenceTally {
        let mut report = AdherenceReport::default();
        if let Some(combos) = withheld {
            report.withheld_combos = combos.to_vec();
            report.seen = Some(GroupScores::default());
            report.withheld = Some(GroupScores::default());
        }
        AdherenceTally { report, split: withheld.is_some(), items: 0 }
    }

    pub fn add(&mut self, caption: &str, img: &RgbImage) -> Option<Judgement> {
        let item = self.items;
        self.items += 1;
        let Some(spec) = parse_caption(caption) else {
            self.report.unparsed += 1;
            return None;
        };
        let judgement = judge(img);
        let results = judgement.matches(&spec);
        self.report.overall.add(results);
        if self.split {
            let withheld = spec.combo().is_some_and(|c| self.report.withheld_combos.contains(&c));
            let group = if withheld { &mut self.report.withheld } else { &mut self.report.seen };
            if let Some(g) = group.as_mut() {
                g.add(results);
            }
        }
        if results.contains(&Some(false)) && self.report.mistakes.len() < MISTAKES_KEPT {
            self.report.mistakes.push(Mistake { item, caption: caption.to_string(), judged: judgement.describe() });
        }
        Some(judgement)
    }

    pub fn finish(self) -> AdherenceReport {
        self.report
    }
}

/// Prompt adherence of captioned images; `withheld` splits the scores into seen and withheld combos.
pub fn adherence(items: &[(String, RgbImage)], withheld: Option<&[Combo]>) -> AdherenceReport {
    let mut tally = AdherenceTally::new(withheld);
    for (caption, img) in items {
        tally.add(caption, img);
    }
    tally.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use difforge_core::{rng_for, Stream};
    use difforge_data::synth::{default_withhold, render, ShapesConfig};
    use rand::Rng;

    fn set(n: usize, size: usize, seed: u64) -> Vec<(String, RgbImage)> {
        let config = ShapesConfig { n, size, seed, withhold: Vec::new() };
        let allowed = config.allowed();
        (0..n).map(|i| render(&config, &allowed, i)).map(|(shape, _, img)| (shape.caption(), img)).collect()
    }

    /// A 3x3 box blur, then uniform noise of +-`noise` levels per channel.
    fn degrade(img: &RgbImage, noise: i32, seed: u64) -> RgbImage {
        let (w, h) = (img.width() as i64, img.height() as i64);
        let mut rng = rng_for(seed, Stream::Noise, 0);
        RgbImage::from_fn(w as u32, h as u32, |x, y| {
            let mut out = [0u8; 3];
            for (c, o) in out.iter_mut().enumerate() {
                let (mut sum, mut n) = (0i64, 0i64);
                for dy in -1..=1 {
                    for dx in -1..=1 {
                        let (nx, ny) = (i64::from(x) + dx, i64::from(y) + dy);
                        if (0..w).contains(&nx) && (0..h).contains(&ny) {
                            sum += i64::from(img.get_pixel(nx as u32, ny as u32)[c]);
                            n += 1;
                        }
                    }
                }
                let v = (sum as f64 / n as f64).round() as i32 + rng.random_range(-noise..=noise);
                *o = v.clamp(0, 255) as u8;
            }
            image::Rgb(out)
        })
    }

    fn accuracies(r: &AdherenceReport) -> Vec<f64> {
        r.overall.attributes().iter().map(|a| a.accuracy().unwrap_or(0.0)).collect()
    }

    #[test]
    fn parses_full_and_partial_captions() {
        let full = parse_caption("a small red triangle at the top left on a white background").unwrap();
        assert_eq!(
            full,
            ShapeSpec {
                kind: Some(Kind::Triangle),
                colour: Some(Colour::Red),
                size: Some(Size::Small),
                position: Some(Position::TopLeft),
                background: Some(Background::White)
            }
        );
        let partial = parse_caption("A red circle.").unwrap();
        assert_eq!(partial, ShapeSpec { kind: Some(Kind::Circle), colour: Some(Colour::Red), ..Default::default() });
        assert_eq!(parse_caption("a large blue square in the centre").unwrap().position, Some(Position::Center));
        assert_eq!(parse_caption("a green diamond at the right on a gray background").unwrap().background, Some(Background::Grey));
        assert_eq!(parse_caption("a cat on a sofa"), None);
        for &p in Position::ALL {
            let s = Shape { kind: Kind::Square, colour: Colour::Green, size: Size::Large, position: p, background: Background::Black };
            assert_eq!(parse_caption(&s.caption()), Some(ShapeSpec::from(s)), "{}", s.caption());
        }
    }

    #[test]
    fn clean_images_are_judged_right() {
        let report = adherence(&set(500, 32, 11), None);
        let acc = accuracies(&report);
        assert!(acc.iter().all(|&a| a >= 0.99), "per attribute {acc:?}; mistakes {:?}", report.mistakes);
        assert!(report.overall.adherence().unwrap() >= 0.98, "{:?}", report.overall);
    }

    #[test]
    fn blurred_noisy_images_are_judged_right() {
        let items: Vec<(String, RgbImage)> = set(500, 32, 12).into_iter().enumerate().map(|(i, (c, img))| (c, degrade(&img, 20, i as u64))).collect();
        let report = adherence(&items, None);
        let acc = accuracies(&report);
        assert!(acc.iter().all(|&a| a >= 0.95), "per attribute {acc:?}; mistakes {:?}", report.mistakes);
    }

    #[test]
    fn larger_images_are_judged_right() {
        for size in [64, 128] {
            let items: Vec<(String, RgbImage)> = set(60, size, 13).into_iter().enumerate().map(|(i, (c, img))| (c, degrade(&img, 20, i as u64))).collect();
            let acc = accuracies(&adherence(&items, None));
            assert!(acc.iter().all(|&a| a >= 0.95), "{size}px: {acc:?}");
        }
    }

    #[test]
    fn shuffled_captions_score_at_chance() {
        let items = set(500, 32, 14);
        let images: Vec<RgbImage> = items.iter().map(|(_, img)| img.clone()).collect();
        // Pair each image with the caption of another: a judge that ignores pixels would still pass.
        let shuffled: Vec<(String, RgbImage)> = (0..items.len()).map(|i| (items[(i * 7 + 3) % items.len()].0.clone(), images[i].clone())).collect();
        let report = adherence(&shuffled, None);
        let acc = accuracies(&report);
        assert!(acc[0] < 0.4 && acc[1] < 0.45 && acc[3] < 0.3, "colour, kind, position at chance: {acc:?}");
        assert!(report.overall.adherence().unwrap() < 0.05, "{:?}", report.overall);
    }

    #[test]
    fn empty_images_fail_every_shape_attribute() {
        let img = RgbImage::from_pixel(32, 32, image::Rgb([255, 255, 255]));
        let j = judge(&img);
        assert_eq!((j.background, j.kind, j.colour), (Background::White, None, None));
        assert_eq!(j.describe(), "nothing on a white background");
        let report = adherence(&[("a red circle on a white background".to_string(), img)], None);
        assert_eq!((report.overall.colour.correct, report.overall.background.correct, report.overall.all_correct), (0, 1, 0));
    }

    #[test]
    fn withheld_combos_are_scored_apart() {
        let config = ShapesConfig { n: 40, size: 32, seed: 15, withhold: Vec::new() };
        let allowed = config.allowed();
        let items: Vec<(String, RgbImage)> = (0..40).map(|i| render(&config, &allowed, i)).map(|(s, _, img)| (s.caption(), img)).collect();
        let withheld = default_withhold();
        let report = adherence(&items, Some(&withheld));
        let (seen, held) = (report.seen.clone().unwrap(), report.withheld.clone().unwrap());
        assert_eq!(seen.images + held.images, 40);
        let expected = items.iter().filter(|(c, _)| parse_caption(c).and_then(|s| s.combo()).is_some_and(|c| withheld.contains(&c))).count();
        assert_eq!(held.images, expected);
        assert!(expected > 0, "the seed draws some withheld combos");
    }
}
