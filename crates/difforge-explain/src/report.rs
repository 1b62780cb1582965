//! Writing each view to files (PNG, GIF, SVG, JSON) and the one-page HTML report with every
//! picture embedded, so the page is self-contained.

use crate::attention::{attention, upsample};
use crate::attribution::attribution;
use crate::heatmap::{heat, pictures, png_bytes, tile};
use crate::neighbours::neighbours;
use crate::timesteps::{chart, profile};
use crate::trajectory::{spread, trajectory};
use crate::Subject;
use base64::Engine;
use difforge_train::{DiffusionModel, TrainError};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn write(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    difforge_core::write_atomic(path, bytes).map_err(|e| TrainError::io(path, e))
}

fn write_json(path: &Path, v: &Value) -> Result<(), TrainError> {
    write(path, &serde_json::to_vec_pretty(v).map_err(|e| TrainError::Other(e.to_string()))?)
}

pub fn write_trajectory(s: &Subject, out: &Path, shown: usize) -> Result<Value, TrainError> {
    let t = trajectory(s);
    let keep = spread(t.steps.len(), shown);
    write(&out.join("trajectory.png"), &png_bytes(&t.strip(&keep)))?;
    write(&out.join("trajectory.gif"), &t.gif())?;
    let v = json!(t.summary(s, &keep));
    write_json(&out.join("trajectory.json"), &v)?;
    Ok(v)
}

pub fn write_timesteps(models: &[(&str, &DiffusionModel, u64)], out: &Path) -> Result<Value, TrainError> {
    let profiles = models.iter().map(|(label, m, step)| profile(m, label, *step)).collect::<Result<Vec<_>, _>>()?;
    write(&out.join("timesteps.svg"), chart(&profiles).as_bytes())?;
    let v = json!(profiles);
    write_json(&out.join("timesteps.json"), &v)?;
    Ok(v)
}

pub fn write_attribution(s: &Subject, out: &Path) -> Result<Value, TrainError> {
    let a = attribution(s);
    let samples = pictures(&a.output);
    let max = a.guidance_difference.max().double_value(&[]).max(a.integrated_gradients.max().double_value(&[])).max(1e-6);
    let rows: Vec<Vec<_>> = (0..samples.len() as i64)
        .map(|i| vec![samples[i as usize].clone(), heat(&a.guidance_difference.get(i), max), heat(&a.integrated_gradients.get(i), max)])
        .collect();
    write(&out.join("attribution.png"), &png_bytes(&tile(&rows, 6)))?;
    let v = json!(a.summary(s.class));
    write_json(&out.join("attribution.json"), &v)?;
    Ok(v)
}

pub fn write_attention(s: &Subject, out: &Path, pixel: (i64, i64), shown: usize) -> Result<Value, TrainError> {
    let t = trajectory(s);
    let keep = spread(t.steps.len(), shown);
    let maps = attention(s, &t, &keep, 0, pixel);
    let side = s.model.config.model.image_size;
    let mut layers: Vec<String> = maps.iter().map(|m| m.layer.clone()).collect();
    layers.dedup();
    layers.sort();
    layers.dedup();
    let rows: Vec<Vec<_>> = layers
        .iter()
        .map(|l| {
            let mut row = vec![pictures(&t.output.narrow(0, 0, 1)).remove(0)];
            for m in maps.iter().filter(|m| &m.layer == l) {
                let up = upsample(&m.map, side);
                row.push(heat(&up, up.max().double_value(&[]).max(1e-9)));
            }
            row
        })
        .collect();
    if !rows.is_empty() {
        write(&out.join("attention.png"), &png_bytes(&tile(&rows, 6)))?;
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

pub fn write_neighbours(s: &Subject, out: &Path, k: usize) -> Result<Value, TrainError> {
    let samples = trajectory(s).output;
    let n = neighbours(s.model, &samples, k)?;
    let own = pictures(&samples);
    let rows: Vec<Vec<_>> = own
        .iter()
        .enumerate()
        .map(|(i, img)| {
            let mut row = vec![img.clone()];
            row.extend(n.images[i * k..(i + 1) * k].iter().map(|t| pictures(t).remove(0)));
            row
        })
        .collect();
    write(&out.join("neighbours.png"), &png_bytes(&tile(&rows, 4)))?;
    let v = json!(n);
    write_json(&out.join("neighbours.json"), &v)?;
    Ok(v)
}

fn embed(out: &Path, name: &str, mime: &str) -> String {
    match std::fs::read(out.join(name)) {
        Ok(bytes) if mime == "image/svg+xml" => String::from_utf8_lossy(&bytes).into_owned(),
        Ok(bytes) => format!(r#"<img alt="{name}" src="data:{mime};base64,{}">"#, base64::engine::general_purpose::STANDARD.encode(bytes)),
        Err(_) => format!("<p>({name} not produced)</p>"),
    }
}

/// The HTML page with every view written into `out`.
pub fn write_html(out: &Path, title: &str, views: &Value) -> Result<PathBuf, TrainError> {
    let section = |h: &str, what: &str, body: String| format!("<section><h2>{h}</h2><p>{what}</p>{body}</section>");
    let numbers =
        |key: &str| format!("<details><summary>numbers</summary><pre>{}</pre></details>", serde_json::to_string_pretty(&views[key]).unwrap_or_default());
    let html = format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:60rem;color:#222}} img{{image-rendering:pixelated;max-width:100%;border:1px solid #ccc}} section{{margin-bottom:2rem}} pre{{font-size:11px;max-height:14rem;overflow:auto}}</style></head><body>
<h1>{title}</h1>
{}{}{}{}{}{}
</body></html>"#,
        section("Trajectory", "Each sample as two rows: the noisy image x<sub>t</sub> (top) and the model's estimate of the clean image x<sub>0</sub> (bottom), from pure noise (left) to the result (right).", embed(out, "trajectory.png", "image/png") + &numbers("trajectory")),
        section("Trajectory, animated", "Every step.", embed(out, "trajectory.gif", "image/gif")),
        section("Loss per noise level", "The validation loss of the EMA weights per timestep band (the trainer's own deterministic validation): what the model has learnt and what it has not.", embed(out, "timesteps.svg", "image/svg+xml") + &numbers("timesteps")),
        section("Class attribution", "Per sample: the image, how much the class changes the model's clean-image estimate along the trajectory (guided minus unconditional), and the integrated gradients of the final image with respect to the class embedding (summed over dimensions; by completeness, the change of the unguided result from the null class to the class). Same colour scale.", embed(out, "attribution.png", "image/png") + &numbers("attribution")),
        section("Attention", "For the query pixel, where each attention layer looks at the shown steps (heads averaged); first column: the result.", embed(out, "attention.png", "image/png") + &numbers("attention")),
        section("Nearest training images", "Each sample (left) beside its nearest training images in pixel space.", embed(out, "neighbours.png", "image/png") + &numbers("neighbours")),
    );
    let path = out.join("report.html");
    write(&path, html.as_bytes())?;
    Ok(path)
}
