//! Writing each view to files (PNG, GIF, JSON) and the one-page HTML report with every picture
//! embedded, so the page is self-contained.

use crate::attention::{attention, upsample};
use crate::attribution::attribution;
use crate::error::ExplainError;
use crate::heatmap::{heat, pictures, png_bytes, tile};
use crate::neighbours::neighbours;
use crate::timesteps::{chart, profile};
use crate::trajectory::{spread, trajectory};
use crate::Subject;
use difforge_model::DiffusionModel;
use difforge_report::html::Page;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn write(path: &Path, bytes: &[u8]) -> Result<(), ExplainError> {
    difforge_core::write_atomic(path, bytes).map_err(|e| ExplainError::write(path, e))
}

fn write_json(path: &Path, v: &Value) -> Result<(), ExplainError> {
    write(path, &serde_json::to_vec_pretty(v).map_err(|e| ExplainError::write(path, e))?)
}

fn write_png(path: &Path, img: &image::DynamicImage) -> Result<(), ExplainError> {
    write(path, &png_bytes(img).map_err(|e| ExplainError::write(path, e))?)
}

fn draw<T>(what: &'static str, r: Result<T, tch::TchError>) -> Result<T, ExplainError> {
    r.map_err(|e| ExplainError::draw(what, e))
}

pub fn write_trajectory(s: &Subject, out: &Path, shown: usize) -> Result<Value, ExplainError> {
    let t = trajectory(s)?;
    let keep = spread(t.steps.len(), shown);
    write_png(&out.join("trajectory.png"), &draw("the trajectory", t.strip(&keep))?)?;
    write(&out.join("trajectory.gif"), &t.gif().map_err(|e| ExplainError::draw("the trajectory animation", e))?)?;
    let v = json!(t.summary(s, &keep));
    write_json(&out.join("trajectory.json"), &v)?;
    Ok(v)
}

pub fn write_timesteps(models: &[(&str, &DiffusionModel, u64)], out: &Path) -> Result<Value, ExplainError> {
    let profiles = models.iter().map(|(label, m, step)| profile(m, label, *step)).collect::<Result<Vec<_>, _>>()?;
    chart(&profiles, &out.join("timesteps.png"))?;
    let v = json!(profiles);
    write_json(&out.join("timesteps.json"), &v)?;
    Ok(v)
}

pub fn write_attribution(s: &Subject, out: &Path) -> Result<Value, ExplainError> {
    let a = attribution(s)?;
    let samples = draw("the samples", pictures(&a.output))?;
    let max = a.guidance_difference.max().double_value(&[]).max(a.integrated_gradients.max().double_value(&[])).max(1e-6);
    let mut rows = Vec::new();
    for (i, sample) in samples.iter().enumerate() {
        let i = i as i64;
        rows.push(vec![
            sample.clone(),
            draw("a heat map", heat(&a.guidance_difference.get(i), max))?,
            draw("a heat map", heat(&a.integrated_gradients.get(i), max))?,
        ]);
    }
    write_png(&out.join("attribution.png"), &tile(&rows, 6))?;
    let v = json!(a.summary(&s.condition));
    write_json(&out.join("attribution.json"), &v)?;
    Ok(v)
}

pub fn write_attention(s: &Subject, out: &Path, pixel: (i64, i64), shown: usize) -> Result<Value, ExplainError> {
    let t = trajectory(s)?;
    let keep = spread(t.steps.len(), shown);
    let maps = attention(s, &t, &keep, 0, pixel)?;
    let side = s.shape()[1];
    let mut layers: Vec<String> = maps.iter().map(|m| m.layer.clone()).collect();
    layers.sort();
    layers.dedup();
    let first = draw("the sample", pictures(&t.output.narrow(0, 0, 1)))?.remove(0);
    let mut rows = Vec::new();
    for l in &layers {
        let mut row = vec![first.clone()];
        for m in maps.iter().filter(|m| &m.layer == l) {
            let up = upsample(&m.map, side);
            row.push(draw("an attention map", heat(&up, up.max().double_value(&[]).max(1e-9)))?);
        }
        rows.push(row);
    }
    if !rows.is_empty() {
        write_png(&out.join("attention.png"), &tile(&rows, 6))?;
    }
    let v = json!({
        "pixel": pixel,
        "layers": layers,
        "steps": keep,
        "timesteps": keep.iter().map(|&k| t.steps[k].1).collect::<Vec<_>>(),
        "sums": maps.iter().map(|m| m.map.sum(tch::Kind::Double).double_value(&[])).collect::<Vec<_>>(),
    });
    write_json(&out.join("attention.json"), &v)?;
    Ok(v)
}

pub fn write_neighbours(s: &Subject, out: &Path, k: usize) -> Result<Value, ExplainError> {
    let samples = trajectory(s)?.output;
    let n = neighbours(s.model, &samples, k)?;
    let own = draw("the samples", pictures(&samples))?;
    let mut rows = Vec::new();
    for (i, img) in own.iter().enumerate() {
        let mut row = vec![img.clone()];
        for t in &n.images[i * k..(i + 1) * k] {
            row.push(draw("a training image", pictures(t))?.remove(0));
        }
        rows.push(row);
    }
    write_png(&out.join("neighbours.png"), &tile(&rows, 4))?;
    let v = json!(n);
    write_json(&out.join("neighbours.json"), &v)?;
    Ok(v)
}

/// The views of the report: (title, explanation, picture file, key of its numbers in `views`).
const SECTIONS: [(&str, &str, &str, &str); 6] = [
    ("Trajectory", "Each sample as two rows: the noisy image x_t (top) and the model's estimate of the clean image x0 (bottom), from pure noise (left) to the result (right).", "trajectory.png", "trajectory"),
    ("Trajectory, animated", "Every step.", "trajectory.gif", ""),
    ("Loss per noise level", "The validation loss of the EMA weights per timestep band (the trainer's own deterministic validation): what the model has learnt and what it has not.", "timesteps.png", "timesteps"),
    ("Attribution", "Per sample: the image, how much the conditioning changes the model's clean-image estimate along the trajectory (guided minus unconditional), and the integrated gradients of the final image with respect to the conditioning (summed over dimensions; by completeness, the change of the unguided result from the null conditioning to the asked one). Same colour scale.", "attribution.png", "attribution"),
    ("Attention", "For the query pixel, where each attention layer looks at the shown steps (heads averaged); first column: the result.", "attention.png", "attention"),
    ("Nearest training images", "Each sample (left) beside its nearest training images in pixel space.", "neighbours.png", "neighbours"),
];

/// The HTML page with every view written into `out`.
pub fn write_html(out: &Path, title: &str, views: &Value) -> Result<PathBuf, ExplainError> {
    let mut page = Page::new(title);
    for (heading, what, file, key) in SECTIONS {
        page.heading(2, heading);
        let mime = if file.ends_with(".gif") { "image/gif" } else { "image/png" };
        match std::fs::read(out.join(file)) {
            Ok(bytes) => page.figure(file, mime, &bytes, what, true),
            Err(_) => page.paragraph(&format!("({file} not produced)")),
        };
        if !key.is_empty() {
            page.details("numbers", &serde_json::to_string_pretty(&views[key]).unwrap_or_else(|e| format!("(cannot show the numbers: {e})")));
        }
    }
    let path = out.join("report.html");
    write(&path, page.render().as_bytes())?;
    Ok(path)
}
