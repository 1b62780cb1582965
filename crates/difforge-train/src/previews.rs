//! The preview images a run writes every `train.sample_every` steps: a grid of every class or
//! preview prompt, or (Stable Diffusion, `model.preview_prompt_file`) the lines of a prompt file
//! in kohya's sd-scripts format, each with its own negative prompt, seed, size, steps and
//! guidance:
//!
//! ```text
//! a photo of sks dog on a beach --n blurry, lowres --d 42 --w 512 --h 768 --s 30 --l 7.5
//! ```
//!
//! Previews draw from their own seeds, never from the training's streams, so a run with
//! previews ends with the same weights as one without.

use crate::error::TrainError;
use difforge_config::{ModelConfig, RunConfig};
use difforge_core::{derive_seed, ConfigError, Stream};
use difforge_model::generate::{checked_size, generate, grid_metadata, preview_columns, preview_conditions, GenerateSpec};
use difforge_model::images::save_grid_with_text;
use difforge_model::{Condition, DiffusionModel, Weights};
use std::path::{Path, PathBuf};

/// One line of a prompt file; None: the run's setting.
#[derive(Debug, Clone, PartialEq)]
pub struct PreviewLine {
    pub prompt: String,
    pub negative: Option<String>,
    /// The first image's seed (the others count up from it).
    pub seed: Option<u64>,
    /// (height, width) in pixels.
    pub size: Option<[i64; 2]>,
    pub steps: Option<usize>,
    pub guidance: Option<f64>,
}

/// Parses a prompt file: one prompt per line, `#` comments and blank lines skipped, and after
/// the prompt kohya's options `--n` (negative prompt), `--d` (seed), `--w`/`--h` (width and
/// height), `--s` (steps), `--l` (guidance). Errors name the file, line and option.
pub fn parse_prompt_file(path: &Path) -> Result<Vec<PreviewLine>, ConfigError> {
    let key = "model.preview_prompt_file";
    let text = difforge_core::read_text_capped(path, 16 << 20).map_err(|why| ConfigError::new(key, path.display(), why))?;
    let mut lines = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let raw = raw.trim();
        if raw.is_empty() || raw.starts_with('#') {
            continue;
        }
        let line = parse_line(raw).map_err(|why| ConfigError::new(key, format!("{}:{}", path.display(), n + 1), why))?;
        lines.push(line);
    }
    if lines.is_empty() {
        return Err(ConfigError::new(key, path.display(), "a file with at least one prompt line"));
    }
    Ok(lines)
}

fn parse_line(raw: &str) -> Result<PreviewLine, String> {
    let mut parts = raw.split(" --");
    let prompt = parts.next().unwrap_or("").trim().to_string();
    let mut line = PreviewLine { prompt, negative: None, seed: None, size: None, steps: None, guidance: None };
    let (mut width, mut height) = (None, None);
    for part in parts {
        let (flag, value) = part.split_once(' ').map_or((part.trim(), ""), |(f, v)| (f.trim(), v.trim()));
        let number = |what: &str| value.parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| format!("--{flag} followed by {what}, got {value:?}"));
        match flag {
            "n" => line.negative = Some(value.to_string()),
            "d" => line.seed = Some(value.parse().map_err(|_| format!("--d followed by a seed (a whole number), got {value:?}"))?),
            "w" => width = Some(positive(number("a width in pixels")?, flag)?),
            "h" => height = Some(positive(number("a height in pixels")?, flag)?),
            "s" => line.steps = Some(positive(number("a number of steps")?, flag)? as usize),
            "l" => line.guidance = Some(number("a guidance scale")?),
            other => return Err(format!("options --n, --d, --w, --h, --s, --l (kohya's), not --{other}")),
        }
    }
    if width.is_some() || height.is_some() {
        line.size = Some([height.or(width).unwrap_or(0), width.or(height).unwrap_or(0)]);
    }
    Ok(line)
}

fn positive(v: f64, flag: &str) -> Result<i64, String> {
    if v >= 1.0 && v.fract() == 0.0 && v <= 16_384.0 {
        Ok(v as i64)
    } else {
        Err(format!("--{flag} followed by a whole number in 1..=16384, got {v}"))
    }
}

/// What a run previews: the family's grid, or the lines of a prompt file.
pub struct Previews {
    lines: Option<Vec<PreviewLine>>,
}

impl Previews {
    /// Reads the run's prompt file, if it has one, and checks every line's size against the model.
    pub fn new(cfg: &RunConfig, model: &DiffusionModel) -> Result<Previews, TrainError> {
        let file = match &cfg.model {
            ModelConfig::StableDiffusion(sd) => sd.preview_prompt_file.as_ref(),
            ModelConfig::PixelUnet(_) => None,
        };
        let Some(file) = file else { return Ok(Previews { lines: None }) };
        let lines = parse_prompt_file(file)?;
        for (i, line) in lines.iter().enumerate() {
            if let Some(size) = line.size {
                checked_size(model, size)
                    .map_err(|e| ConfigError::new("model.preview_prompt_file", format!("{} (prompt {})", file.display(), i + 1), e.to_string()))?;
            }
        }
        Ok(Previews { lines: Some(lines) })
    }

    /// Writes the previews of the model as it is at `step`; returns the (first) grid.
    pub fn write(&self, model: &DiffusionModel, run_dir: &Path, step: u64) -> Result<PathBuf, TrainError> {
        let cfg = model.config();
        let per_class = cfg.train.sample_per_class;
        let first_seed = derive_seed(cfg.seed, Stream::Sample, 0) >> 16;
        let path = run_dir.join("samples").join(format!("step-{step:08}.png"));
        let Some(lines) = &self.lines else {
            let (conditions, seeds) = preview_conditions(model.family(), per_class, first_seed);
            let spec = GenerateSpec {
                conditions,
                seeds,
                sampler: &cfg.sample,
                weights: Weights::Ema,
                max_batch: 256,
                fixed_batch: false,
                negatives: Vec::new(),
                size: None,
            };
            let images = generate(model, &spec)?;
            let columns = preview_columns(model.family().condition_kind(), per_class);
            let meta = grid_metadata(&spec, columns, serde_json::json!({ "step": step, "weights": "ema" }));
            save_grid_with_text(&images, columns, &[("difforge", meta)], &path).map_err(|e| TrainError::io(&path, e))?;
            // The seeds, so that `difforge sample` (or diffusers, with torch's noise) can redraw an image.
            tracing::info!("step {step}: previews {} (row r, image c: seed {first_seed} + r x {per_class} + c)", path.display());
            return Ok(path);
        };
        // One grid per image size (in the order sizes first appear), a row per prompt line.
        let own = model.family().pixel_shape();
        let mut grids: Vec<([i64; 2], Vec<tch::Tensor>, Vec<serde_json::Value>)> = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let seed = line.seed.unwrap_or(first_seed + (i * per_class) as u64);
            let sampler = difforge_diffusion::SamplerConfig {
                steps: line.steps.unwrap_or(cfg.sample.steps),
                guidance: line.guidance.unwrap_or(cfg.sample.guidance),
                ..cfg.sample.clone()
            };
            let spec = GenerateSpec {
                conditions: vec![Condition::Text(line.prompt.clone()); per_class],
                seeds: (0..per_class as u64).map(|j| seed + j).collect(),
                sampler: &sampler,
                weights: Weights::Ema,
                max_batch: 256,
                fixed_batch: false,
                negatives: line.negative.as_ref().map_or_else(Vec::new, |n| vec![Condition::Text(n.clone()); per_class]),
                size: line.size,
            };
            let size = line.size.unwrap_or([own[1], own[2]]);
            let images = generate(model, &spec)?;
            let row = serde_json::from_str(&grid_metadata(&spec, per_class, serde_json::json!({}))).unwrap_or_default();
            match grids.iter_mut().find(|(s, _, _)| *s == size) {
                Some((_, rows, meta)) => {
                    rows.push(images);
                    meta.push(row);
                }
                None => grids.push((size, vec![images], vec![row])),
            }
        }
        for (k, ([h, w], rows, meta)) in grids.iter().enumerate() {
            let file = if k == 0 { path.clone() } else { run_dir.join("samples").join(format!("step-{step:08}-{w}x{h}.png")) };
            let meta = serde_json::json!({ "step": step, "weights": "ema", "rows": meta }).to_string();
            save_grid_with_text(&tch::Tensor::cat(rows, 0), per_class, &[("difforge", meta)], &file).map_err(|e| TrainError::io(&file, e))?;
        }
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kohya_lines_parse_with_their_options() {
        let line = parse_line("a photo of sks dog, beach --n blurry, lowres --d 42 --w 64 --h 96 --s 30 --l 7.5").unwrap();
        assert_eq!(
            line,
            PreviewLine {
                prompt: "a photo of sks dog, beach".into(),
                negative: Some("blurry, lowres".into()),
                seed: Some(42),
                size: Some([96, 64]),
                steps: Some(30),
                guidance: Some(7.5),
            }
        );
        // A width alone makes a square; a plain prompt keeps every setting.
        assert_eq!(parse_line("a cat --w 48").unwrap().size, Some([48, 48]));
        assert_eq!(parse_line("a cat").unwrap(), PreviewLine { prompt: "a cat".into(), negative: None, seed: None, size: None, steps: None, guidance: None });
        for bad in ["a cat --w 0", "a cat --s 2.5", "a cat --d -1", "a cat --x 3", "a cat --l nan"] {
            assert!(parse_line(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_prompt_file_skips_comments_and_names_the_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("prompts.txt");
        std::fs::write(&file, "# previews\n\na red square --d 3\na blue circle --s 8\n").unwrap();
        let lines = parse_prompt_file(&file).unwrap();
        assert_eq!(lines.iter().map(|l| l.prompt.as_str()).collect::<Vec<_>>(), ["a red square", "a blue circle"]);
        std::fs::write(&file, "a red square\na blue circle --w 12x\n").unwrap();
        let err = parse_prompt_file(&file).unwrap_err().to_string();
        assert!(err.contains("model.preview_prompt_file") && err.contains("prompts.txt:2") && err.contains("--w"), "{err}");
        std::fs::write(&file, "# nothing\n").unwrap();
        assert!(parse_prompt_file(&file).is_err());
    }
}
