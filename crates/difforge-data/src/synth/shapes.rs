//! `difforge data synth shapes`: a captioned set of one coloured shape per image ("a small red
//! triangle at the top left on a white background"), with some colour-kind combinations withheld
//! from training so that a model's generalisation to unseen combinations can be measured.
//!
//! Layout of the folder: `NNNNN.png` + `NNNNN.txt` (the caption sidecar the folder source reads),
//! `shapes.json` (the manifest: settings, attribute lists, withheld combos, every file's
//! attributes; written last, so its presence marks a complete set), and `prompts-seen.txt` /
//! `prompts-withheld.txt` (balanced evaluation prompts, one caption per line).
//!
//! Every image is drawn from its own stream (seed, [`Stream::Sample`], index): the same seed and
//! settings give byte-identical files, in any order and on any number of threads.

use crate::error::DataError;
use crate::synth::attributes::{Background, Colour, Combo, Kind, Named, Position, Shape, Size};
use crate::synth::raster::{draw, Placement};
use difforge_core::{rng_for, write_atomic, ConfigError, Stream};
use image::RgbImage;
use rand::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const MANIFEST_FILE: &str = "shapes.json";
pub const SEEN_PROMPTS_FILE: &str = "prompts-seen.txt";
pub const WITHHELD_PROMPTS_FILE: &str = "prompts-withheld.txt";
pub const GENERATOR: &str = "difforge shapes";
/// Bumped whenever the same settings would draw different pixels or captions.
pub const VERSION: u32 = 2;

/// Image sides accepted. Below 24 pixels a small shape spans under seven pixels, and once blurred
/// its kind is a guess, for a model as for the judge.
pub const SIZES: std::ops::RangeInclusive<usize> = 24..=256;
pub const MAX_IMAGES: usize = 1_000_000;
/// How far a shape's centre may move from its position's anchor, as a fraction of the image side.
/// With the largest half-extent (0.23) and the edge anchors (0.25) it keeps a shape inside.
const CENTRE_JITTER: f64 = 0.01;
/// Evaluation prompts per seen combo and per withheld combo.
const SEEN_PROMPTS_PER_COMBO: usize = 4;
const WITHHELD_PROMPTS_PER_COMBO: usize = 12;

/// The default withheld combos: one per colour family of three different kinds, so that every
/// colour and every kind still appears in training.
pub fn default_withhold() -> Vec<Combo> {
    vec![
        Combo { colour: Colour::Red, kind: Kind::Triangle },
        Combo { colour: Colour::Blue, kind: Kind::Circle },
        Combo { colour: Colour::Yellow, kind: Kind::Square },
    ]
}

#[derive(Debug, Clone)]
pub struct ShapesConfig {
    pub n: usize,
    /// Image side in pixels.
    pub size: usize,
    pub seed: u64,
    pub withhold: Vec<Combo>,
}

impl ShapesConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_IMAGES).contains(&self.n) {
            return Err(ConfigError::new("--n", self.n, format!("a number of images in 1..={MAX_IMAGES}")));
        }
        if !SIZES.contains(&self.size) {
            return Err(ConfigError::new("--size", self.size, format!("an image side in {}..={} pixels", SIZES.start(), SIZES.end())));
        }
        if self.allowed().is_empty() {
            let listed = self.withhold.iter().map(|c| c.name()).collect::<Vec<_>>().join(",");
            return Err(ConfigError::new("--withhold", listed, "some colour-kind combination left for training"));
        }
        Ok(())
    }

    /// The combos training images are drawn from.
    pub fn allowed(&self) -> Vec<Combo> {
        Combo::all().into_iter().filter(|c| !self.withhold.contains(c)).collect()
    }
}

/// `--withhold`: "red triangle,blue circle", or "none". Duplicates are dropped.
pub fn parse_withhold(text: &str) -> Result<Vec<Combo>, ConfigError> {
    if text.trim().eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    let mut combos = Vec::new();
    for item in text.split(',') {
        let combo = Combo::parse(item).ok_or_else(|| {
            let colours = Colour::ALL.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ");
            let kinds = Kind::ALL.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ");
            ConfigError::new(
                "--withhold",
                format!("{:?}", item.trim()),
                format!("\"<colour> <kind>\" items separated by commas (colours: {colours}; kinds: {kinds}), or none"),
            )
        })?;
        if !combos.contains(&combo) {
            combos.push(combo);
        }
    }
    Ok(combos)
}

/// One drawn image: its attributes and exact placement (in pixels).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShapeFile {
    pub file: String,
    pub caption: String,
    #[serde(flatten)]
    pub shape: Shape,
    pub centre_x: f64,
    pub centre_y: f64,
    pub half_extent: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaletteEntry {
    pub name: String,
    pub rgb: [u8; 3],
}

/// shapes.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShapesManifest {
    pub generator: String,
    pub version: u32,
    pub seed: u64,
    pub size: usize,
    pub n: usize,
    pub kinds: Vec<String>,
    pub colours: Vec<PaletteEntry>,
    pub sizes: Vec<String>,
    pub positions: Vec<String>,
    pub backgrounds: Vec<PaletteEntry>,
    pub withheld: Vec<Combo>,
    pub seen_prompts: String,
    pub withheld_prompts: String,
    pub files: Vec<ShapeFile>,
}

impl ShapesManifest {
    /// A shapes.json; an error when the file is not one (another program's JSON, another generator).
    pub fn read(path: &Path) -> Result<ShapesManifest, DataError> {
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        let manifest: ShapesManifest = serde_json::from_slice(&bytes).map_err(|e| DataError::metadata(path, format!("not a shapes manifest: {e}")))?;
        if manifest.generator != GENERATOR {
            return Err(DataError::metadata(path, format!("written by {:?}, not {GENERATOR:?}", manifest.generator)));
        }
        Ok(manifest)
    }
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ShapesReport {
    pub out: PathBuf,
    pub n: usize,
    pub size: usize,
    pub seed: u64,
    pub withheld: Vec<Combo>,
    /// Training images per combo, "red circle": 12, ...
    pub combo_counts: std::collections::BTreeMap<String, usize>,
    pub seen_prompts: usize,
    pub withheld_prompts: usize,
}

/// The attributes and placement of image `index`.
fn draw_shape(config: &ShapesConfig, allowed: &[Combo], index: usize) -> (Shape, Placement) {
    let mut rng = rng_for(config.seed, Stream::Sample, index as u64);
    let combo = allowed[rng.random_range(0..allowed.len())];
    let size = Size::ALL[rng.random_range(0..Size::ALL.len())];
    let position = Position::ALL[rng.random_range(0..Position::ALL.len())];
    let background = Background::ALL[rng.random_range(0..Background::ALL.len())];
    let shape = Shape { kind: combo.kind, colour: combo.colour, size, position, background };
    let side = config.size as f64;
    let (lo, hi) = size.half_extent_range();
    let (ax, ay) = position.centre();
    let mut jitter = || rng.random_range(-CENTRE_JITTER..=CENTRE_JITTER);
    let (jx, jy) = (jitter(), jitter());
    let half_extent = rng.random_range(lo..=hi) * side;
    (shape, Placement { cx: (ax + jx) * side, cy: (ay + jy) * side, half_extent })
}

fn file_stem(index: usize, n: usize) -> String {
    let width = (n.saturating_sub(1)).to_string().len().max(5);
    format!("{index:0width$}")
}

/// Image `index` of the set drawn from `allowed` (see [`ShapesConfig::allowed`]): its attributes,
/// placement and pixels, without writing anything.
pub fn render(config: &ShapesConfig, allowed: &[Combo], index: usize) -> (Shape, Placement, RgbImage) {
    let (shape, placement) = draw_shape(config, allowed, index);
    let img = draw(shape.kind, placement, config.size, shape.colour.rgb(), shape.background.rgb());
    (shape, placement, img)
}

/// Draws and writes image `index` and its caption; returns its manifest entry.
fn write_one(config: &ShapesConfig, allowed: &[Combo], out: &Path, index: usize) -> Result<ShapeFile, DataError> {
    let (shape, placement, img) = render(config, allowed, index);
    let stem = file_stem(index, config.n);
    let png = out.join(format!("{stem}.png"));
    crate::grid::save_png(&image::DynamicImage::ImageRgb8(img), &png).map_err(|e| DataError::io(&png, e))?;
    let caption = shape.caption();
    let txt = out.join(format!("{stem}.txt"));
    write_atomic(&txt, format!("{caption}\n").as_bytes()).map_err(|e| DataError::io(&txt, e))?;
    let round = |v: f64| (v * 1000.0).round() / 1000.0;
    Ok(ShapeFile {
        file: format!("{stem}.png"),
        caption,
        shape,
        centre_x: round(placement.cx),
        centre_y: round(placement.cy),
        half_extent: round(placement.half_extent),
    })
}

/// The `j`th evaluation variant of the `c`th combo: sizes, positions and backgrounds cycle with
/// coprime periods, so a combo's first 6 variants cover every size-background pair and its first
/// 9 every position.
fn variant(combo: Combo, c: usize, j: usize) -> Shape {
    Shape {
        kind: combo.kind,
        colour: combo.colour,
        size: Size::ALL[j % Size::ALL.len()],
        position: Position::ALL[(2 * c + 4 * j) % Position::ALL.len()],
        background: Background::ALL[(c + j) % Background::ALL.len()],
    }
}

/// Evaluation captions: `per_combo` variants of each combo.
pub fn prompts(combos: &[Combo], per_combo: usize) -> Vec<String> {
    combos.iter().enumerate().flat_map(|(c, &combo)| (0..per_combo).map(move |j| variant(combo, c, j).caption())).collect()
}

/// Whether `name` is a file this generator writes (so a previous set's leftovers can be removed).
fn is_generated_name(name: &str) -> bool {
    let stem_digits = |ext: &str| name.strip_suffix(ext).is_some_and(|s| s.len() >= 5 && s.bytes().all(|b| b.is_ascii_digit()));
    stem_digits(".png") || stem_digits(".txt") || [MANIFEST_FILE, SEEN_PROMPTS_FILE, WITHHELD_PROMPTS_FILE].contains(&name)
}

/// Makes `out` ready: new, empty, a previous shapes set, or anything with `overwrite`. A previous
/// set's (or, with `overwrite`, any) generated-looking files are removed, so that a smaller set
/// does not keep a larger one's tail; other files are left alone.
fn prepare_out(out: &Path, overwrite: bool) -> Result<(), DataError> {
    if out.exists() && !out.is_dir() {
        return Err(ConfigError::new("--out", out.display(), "a folder (this is a file)").into());
    }
    std::fs::create_dir_all(out).map_err(|e| DataError::io(out, e))?;
    let names: Vec<String> =
        std::fs::read_dir(out).map_err(|e| DataError::io(out, e))?.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    if names.is_empty() {
        return Ok(());
    }
    let previous = ShapesManifest::read(&out.join(MANIFEST_FILE)).is_ok();
    if !previous && !overwrite {
        let why = format!("not empty and not a shapes set (no {MANIFEST_FILE}); pass --overwrite to write into it anyway");
        return Err(ConfigError::problem("--out", format!("{}: {why}", out.display())).into());
    }
    for name in names.iter().filter(|n| is_generated_name(n)) {
        let path = out.join(name);
        std::fs::remove_file(&path).map_err(|e| DataError::io(&path, e))?;
    }
    Ok(())
}

fn write_lines(path: &Path, lines: &[String]) -> Result<(), DataError> {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    write_atomic(path, text.as_bytes()).map_err(|e| DataError::io(path, e))
}

fn palette<T: Named>(rgb: impl Fn(T) -> [u8; 3]) -> Vec<PaletteEntry> {
    T::ALL.iter().map(|&v| PaletteEntry { name: v.name().to_string(), rgb: rgb(v) }).collect()
}

fn names<T: Named>() -> Vec<String> {
    T::ALL.iter().map(|v| v.name().to_string()).collect()
}

/// Draws the set into `out` (see the module documentation).
pub fn generate(config: &ShapesConfig, out: &Path, overwrite: bool) -> Result<ShapesReport, DataError> {
    config.validate()?;
    prepare_out(out, overwrite)?;
    let allowed = config.allowed();
    let files: Vec<ShapeFile> = (0..config.n).into_par_iter().map(|i| write_one(config, &allowed, out, i)).collect::<Result<_, _>>()?;
    let seen = prompts(&allowed, SEEN_PROMPTS_PER_COMBO);
    let withheld = prompts(&config.withhold, WITHHELD_PROMPTS_PER_COMBO);
    write_lines(&out.join(SEEN_PROMPTS_FILE), &seen)?;
    write_lines(&out.join(WITHHELD_PROMPTS_FILE), &withheld)?;
    let mut combo_counts = std::collections::BTreeMap::new();
    for f in &files {
        *combo_counts.entry(f.shape.combo().name()).or_insert(0) += 1;
    }
    let manifest = ShapesManifest {
        generator: GENERATOR.to_string(),
        version: VERSION,
        seed: config.seed,
        size: config.size,
        n: config.n,
        kinds: names::<Kind>(),
        colours: palette(Colour::rgb),
        sizes: names::<Size>(),
        positions: names::<Position>(),
        backgrounds: palette(Background::rgb),
        withheld: config.withhold.clone(),
        seen_prompts: SEEN_PROMPTS_FILE.to_string(),
        withheld_prompts: WITHHELD_PROMPTS_FILE.to_string(),
        files,
    };
    let path = out.join(MANIFEST_FILE);
    let bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| DataError::metadata(&path, e))?;
    write_atomic(&path, &bytes).map_err(|e| DataError::io(&path, e))?;
    Ok(ShapesReport {
        out: out.to_path_buf(),
        n: config.n,
        size: config.size,
        seed: config.seed,
        withheld: config.withhold.clone(),
        combo_counts,
        seen_prompts: seen.len(),
        withheld_prompts: withheld.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(n: usize) -> ShapesConfig {
        ShapesConfig { n, size: 32, seed: 3, withhold: default_withhold() }
    }

    fn read_all(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
            .collect();
        files.sort();
        files
    }

    #[test]
    fn same_seed_gives_the_same_bytes_and_withheld_combos_never_appear() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let report = generate(&config(60), a.path(), false).unwrap();
        generate(&config(60), b.path(), false).unwrap();
        assert_eq!(read_all(a.path()), read_all(b.path()));
        assert_eq!(read_all(a.path()).len(), 60 * 2 + 3);
        let manifest = ShapesManifest::read(&a.path().join(MANIFEST_FILE)).unwrap();
        for f in &manifest.files {
            assert!(!default_withhold().contains(&f.shape.combo()), "{}", f.caption);
            let sidecar = std::fs::read_to_string(a.path().join(f.file.replace(".png", ".txt"))).unwrap();
            assert_eq!(sidecar.trim(), f.caption);
        }
        assert_eq!(report.combo_counts.values().sum::<usize>(), 60);
        assert!(report.combo_counts.len() > 10, "combos are drawn from all the allowed ones: {:?}", report.combo_counts);
        let other = ShapesConfig { seed: 4, ..config(60) };
        generate(&other, b.path(), false).unwrap();
        assert_ne!(read_all(a.path()), read_all(b.path()), "another seed draws another set");
    }

    #[test]
    fn prompt_files_are_balanced() {
        let dir = tempfile::tempdir().unwrap();
        generate(&config(5), dir.path(), false).unwrap();
        let withheld = std::fs::read_to_string(dir.path().join(WITHHELD_PROMPTS_FILE)).unwrap();
        let lines: Vec<&str> = withheld.lines().collect();
        assert_eq!(lines.len(), 3 * WITHHELD_PROMPTS_PER_COMBO);
        assert!(lines.iter().all(|l| l.contains("red triangle") || l.contains("blue circle") || l.contains("yellow square")));
        for &p in Position::ALL {
            assert!(lines.iter().any(|l| l.contains(&format!("red triangle at the {} on", p.name()))), "{p:?} missing");
        }
        let seen = std::fs::read_to_string(dir.path().join(SEEN_PROMPTS_FILE)).unwrap();
        assert_eq!(seen.lines().count(), 17 * SEEN_PROMPTS_PER_COMBO);
        assert!(!seen.contains("red triangle") && seen.contains("red circle"));
    }

    #[test]
    fn refuses_foreign_folders_and_replaces_previous_sets() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.md"), "mine").unwrap();
        let err = generate(&config(3), dir.path(), false).unwrap_err().to_string();
        assert!(err.contains("--out") && err.contains("--overwrite"), "{err}");
        generate(&config(8), dir.path(), true).unwrap();
        generate(&config(3), dir.path(), false).unwrap();
        assert!(!dir.path().join("00007.png").exists(), "a smaller set removes the larger one's tail");
        assert!(dir.path().join("notes.md").exists(), "files it did not write are kept");
    }

    #[test]
    fn bad_input_names_the_flag_and_value() {
        let err = parse_withhold("red triangle,pink circle").unwrap_err().to_string();
        assert!(err.contains("--withhold") && err.contains("pink circle"), "{err}");
        assert_eq!(parse_withhold("none").unwrap(), Vec::new());
        assert_eq!(parse_withhold("Red Triangle, red triangle").unwrap().len(), 1);
        let all = ShapesConfig { withhold: Combo::all(), ..config(3) };
        assert!(all.validate().unwrap_err().to_string().contains("--withhold"));
        assert!(ShapesConfig { n: 0, ..config(3) }.validate().unwrap_err().to_string().contains("--n 0"));
        assert!(ShapesConfig { size: 8, ..config(3) }.validate().unwrap_err().to_string().contains("--size 8"));
    }
}
