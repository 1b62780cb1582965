//! The evaluation report: `eval.json` (the numbers) and `report.html`, one self-contained page
//! (every image embedded) with the metrics table, sample and real grids, the closest
//! sample/training pairs, the confusion matrix, and for a run folder the training curves and the
//! metrics over checkpoints. The PNGs are also written beside the page.

use crate::evaluate::{EvalExtras, EvalReport};
use crate::EvalError;
use difforge_model::images::save_grid;
use difforge_report::html::escape;
use difforge_report::{confusion_matrix_png, line_chart_png, Series};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Samples shown in the grid.
const GRID_IMAGES: i64 = 100;

/// Writes the report of one evaluation (the last of `history` when a run was evaluated) into
/// `dir`. `run_dir` adds the training curves; `history` (one report per checkpoint) the metrics
/// over steps.
pub fn write(dir: &Path, report: &EvalReport, extras: &EvalExtras, run_dir: Option<&Path>, history: &[EvalReport]) -> Result<PathBuf, EvalError> {
    std::fs::create_dir_all(dir).map_err(|e| write_err(dir, e))?;
    // The same JSON as `difforge eval --json` prints.
    let json =
        if history.len() > 1 { serde_json::to_string_pretty(&serde_json::json!({ "checkpoints": history })) } else { serde_json::to_string_pretty(report) };
    let json = json.map_err(|e| write_err(&dir.join("eval.json"), e))?;
    write_file(&dir.join("eval.json"), (json + "\n").as_bytes())?;

    let mut figures = Vec::new();
    let columns = grid_columns(extras);
    let shown = extras.samples.size()[0].min(GRID_IMAGES);
    grid(&extras.samples.narrow(0, 0, shown), columns, &dir.join("samples.png"))?;
    figures
        .push(("samples.png", format!("The first {shown} samples{}.", if extras.asked.is_some() { ", classes in turn (one column per class)" } else { "" })));
    // Spread over the whole set: splits are sorted by dataset position, often by class.
    let real_count = extras.real.size()[0];
    let real_shown = real_count.min(GRID_IMAGES);
    let spread = Tensor::from_slice(&(0..real_shown).map(|i| i * real_count / real_shown).collect::<Vec<i64>>());
    grid(&extras.real.index_select(0, &spread), columns, &dir.join("real.png"))?;
    figures.push(("real.png", format!("{real_shown} of the real images ({}).", report.real.dataset)));
    if let Some(caption) = pairs_figure(dir, report, extras)? {
        figures.push(("closest-pairs.png", caption));
    }
    if let Some(classes) = &report.classes {
        confusion_matrix_png(&dir.join("confusion.png"), &classes.confusion, &classes.class_names, "Samples: class asked for vs class the classifier sees")?;
        figures.push(("confusion.png", "Confusion matrix of the samples (rows: class asked for; columns: the classifier's label).".to_string()));
    }
    if let Some(run) = run_dir {
        if loss_curves(run, &dir.join("loss.png"))? {
            figures.push(("loss.png", format!("Training loss and validation loss (raw and EMA weights) of {}.", run.display())));
        }
    }
    if history.len() > 1 {
        metric_curves(dir, history)?;
        figures.push(("fd-over-steps.png", "Frechet distance of each kept checkpoint.".to_string()));
        figures.push(("fractions-over-steps.png", "Precision, recall, coverage and class accuracy of each kept checkpoint.".to_string()));
    }
    let html = page(report, extras, history, dir, &figures);
    let path = dir.join("report.html");
    write_file(&path, html.as_bytes())?;
    Ok(path)
}

fn write_err(path: &Path, e: impl ToString) -> EvalError {
    EvalError::Write { path: path.to_path_buf(), reason: e.to_string() }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), EvalError> {
    difforge_core::write_atomic(path, bytes).map_err(|e| write_err(path, e))
}

fn grid(images: &Tensor, columns: usize, path: &Path) -> Result<(), EvalError> {
    save_grid(images, columns, path).map_err(|e| write_err(path, e))
}

/// One column per class for class-conditional samples (classes in turn), else 10.
fn grid_columns(extras: &EvalExtras) -> usize {
    match &extras.asked {
        Some(asked) => asked.iter().max().map_or(10, |&m| (m + 1) as usize).clamp(1, 20),
        None => 10,
    }
}

/// The closest sample/training pairs: samples on the top row, their nearest training images below.
fn pairs_figure(dir: &Path, report: &EvalReport, extras: &EvalExtras) -> Result<Option<String>, EvalError> {
    let pairs = &report.memorisation.closest;
    if pairs.is_empty() {
        return Ok(None);
    }
    let top = pairs.iter().map(|p| extras.samples.get(p.sample as i64));
    let bottom = pairs.iter().map(|p| extras.train.get(p.train_index as i64));
    let both = Tensor::stack(&top.chain(bottom).collect::<Vec<_>>(), 0);
    grid(&both, pairs.len(), &dir.join("closest-pairs.png"))?;
    Ok(Some(format!(
        "The {} samples closest to a training image (top) and that training image (bottom), closest first; distance ratios {}.",
        pairs.len(),
        pairs.iter().map(|p| format!("{:.2}", p.ratio)).collect::<Vec<_>>().join(", ")
    )))
}

/// Training and validation loss from a run's metrics.jsonl and validation.jsonl.
fn loss_curves(run: &Path, out: &Path) -> Result<bool, EvalError> {
    let train = read_series(&run.join("metrics.jsonl"), "loss");
    let val = read_series(&run.join("validation.jsonl"), "val_loss");
    let val_ema = read_series(&run.join("validation.jsonl"), "val_loss_ema");
    let series: Vec<Series> = [("training loss", train), ("validation loss", val), ("validation loss (EMA)", val_ema)]
        .into_iter()
        .filter(|(_, points)| !points.is_empty())
        .map(|(name, points)| Series { name: name.to_string(), points })
        .collect();
    if series.is_empty() {
        return Ok(false);
    }
    line_chart_png(out, "Loss", "step", "loss", &series)?;
    Ok(true)
}

/// (step, value) of `key` in every JSON line of `path` that has both (missing file: none).
fn read_series(path: &Path, key: &str) -> Vec<(f64, f64)> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|v| Some((v.get("step")?.as_f64()?, v.get(key)?.as_f64()?)))
        .collect()
}

fn metric_curves(dir: &Path, history: &[EvalReport]) -> Result<(), EvalError> {
    let step = |r: &EvalReport| r.step as f64;
    let networks = history[0].metrics.len();
    let fd: Vec<Series> = (0..networks)
        .map(|i| Series {
            name: history[0].metrics[i].network.metric.to_string(),
            points: history.iter().filter_map(|r| Some((step(r), r.metrics.get(i)?.frechet_distance))).collect(),
        })
        .collect();
    line_chart_png(&dir.join("fd-over-steps.png"), "Frechet distance over training", "step", "distance", &fd)?;
    let main = |f: fn(&crate::metrics::manifold::Manifold) -> f64| {
        history.iter().filter_map(move |r| Some((step(r), f(&r.metrics.first()?.manifold)))).collect::<Vec<_>>()
    };
    let mut fractions = vec![
        Series { name: "precision".into(), points: main(|m| m.precision) },
        Series { name: "recall".into(), points: main(|m| m.recall) },
        Series { name: "coverage".into(), points: main(|m| m.coverage) },
    ];
    let accuracy: Vec<(f64, f64)> = history.iter().filter_map(|r| Some((step(r), r.classes.as_ref()?.accuracy))).collect();
    if !accuracy.is_empty() {
        fractions.push(Series { name: "class accuracy".into(), points: accuracy });
    }
    Ok(line_chart_png(&dir.join("fractions-over-steps.png"), "Sample quality over training", "step", "fraction", &fractions)?)
}

fn embed_png(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => difforge_report::html::image(path.file_name().and_then(|n| n.to_str()).unwrap_or(""), "image/png", &bytes),
        Err(_) => format!("<p>({} missing)</p>", escape(&path.display().to_string())),
    }
}

fn page(report: &EvalReport, extras: &EvalExtras, history: &[EvalReport], dir: &Path, figures: &[(&str, String)]) -> String {
    let mut body = String::new();
    let s = &report.samples;
    let source = match &s.source {
        Some(folder) => format!("read from {}", folder.display()),
        None => format!(
            "{} {} steps, guidance {}, seeds {}..{}, {} weights",
            s.sampler,
            s.steps,
            s.guidance,
            s.seed,
            s.seed + s.count as u64 - 1,
            if s.ema { "EMA" } else { "raw" }
        ),
    };
    let _ = write!(
        body,
        "<p>Checkpoint <code>{}</code> (step {}). {} samples ({}); {} real images: {}.</p>",
        escape(&report.checkpoint.display().to_string()),
        report.step,
        s.count,
        escape(&source),
        report.real.count,
        escape(&report.real.dataset)
    );
    body += &metrics_table(report);
    if let Some(c) = &report.classes {
        let _ = write!(body, "<h2>Class accuracy</h2><p><b>{:.1}%</b> of {} samples are labelled as the class asked for by the classifier (which is {:.1}% accurate on held-out real images).</p>", 100.0 * c.accuracy, c.samples, 100.0 * c.classifier_val_accuracy);
        body += "<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>asked</th></tr>";
        for p in &c.per_class {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{}</td></tr>",
                escape(&p.class),
                p.precision,
                p.recall,
                p.f1,
                p.support
            );
        }
        body += "</table>";
    }
    let m = &report.memorisation;
    let _ = write!(
        body,
        "<h2>Memorisation</h2><p>{:.2}% of {} samples are closer to a training image than {} x the median distance between training images and their nearest neighbour ({:.4} RMS); {}. Median ratio {:.2}.</p>",
        100.0 * m.fraction_below,
        m.samples,
        m.threshold,
        m.train_neighbour_median,
        match m.heldout_fraction_below {
            Some(f) => format!("for {} held-out real images the fraction is {:.2}%", m.heldout_images, 100.0 * f),
            None => "no held-out images to compare with".to_string(),
        },
        m.median_ratio
    );
    if let Some(c) = &report.consistency {
        let sets: Vec<String> = c.per_set.iter().map(|(seed, v)| format!("seeds from {seed}: {v:.4}")).collect();
        let _ = write!(
            body,
            "<h2>Consistency</h2><p>Same seeds, generated twice: {} of {} images {}. {} over {} sample sets of {}: mean {:.4}, standard deviation {:.4} ({}).</p>",
            if c.same_seed_identical { "all" } else { "NOT all" },
            c.repeated_images,
            if c.same_seed_identical { "bit-identical" } else { "identical" },
            report.metrics.first().map_or("FD", |f| f.network.metric),
            c.per_set.len(),
            c.samples_per_set,
            c.mean,
            c.std,
            sets.join("; ")
        );
    }
    if history.len() > 1 {
        body += "<h2>Checkpoints</h2><table><tr><th>step</th>";
        for f in &history[0].metrics {
            let _ = write!(body, "<th>{}</th>", escape(f.network.metric));
        }
        body += "<th>precision</th><th>recall</th><th>class accuracy</th></tr>";
        for r in history {
            let _ = write!(body, "<tr><td>{}</td>", r.step);
            for f in &r.metrics {
                let _ = write!(body, "<td>{:.4}</td>", f.frechet_distance);
            }
            let first = r.metrics.first();
            let _ = write!(
                body,
                "<td>{:.3}</td><td>{:.3}</td><td>{}</td></tr>",
                first.map_or(0.0, |f| f.manifold.precision),
                first.map_or(0.0, |f| f.manifold.recall),
                r.classes.as_ref().map_or("-".to_string(), |c| format!("{:.1}%", 100.0 * c.accuracy))
            );
        }
        body += "</table>";
    }
    body += "<h2>Figures</h2>";
    for (file, caption) in figures {
        let _ = write!(body, "<figure>{}<figcaption>{}</figcaption></figure>", embed_png(&dir.join(file)), escape(caption));
    }
    if !extras.notes.is_empty() {
        let _ = write!(body, "<h2>Notes</h2><ul>{}</ul>", extras.notes.iter().map(|n| format!("<li>{}</li>", escape(n))).collect::<String>());
    }
    let timings: Vec<String> = extras.timings.iter().map(|(k, v)| format!("{k}: {v:.1} s")).collect();
    let _ = write!(body, "<p class=small>Wall time: {}. The numbers are also in eval.json.</p>", escape(&timings.join("; ")));
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>difforge evaluation</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:62rem;color:#222}} table{{border-collapse:collapse;margin:0.5rem 0}} td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}} th{{background:#f4f4f4}} figure{{margin:1rem 0}} figure img{{max-width:100%;border:1px solid #ccc}} img[alt$="samples.png"],img[alt$="real.png"],img[alt$="closest-pairs.png"]{{image-rendering:pixelated;width:480px}} .small{{font-size:12px;color:#666}}</style></head><body>
<h1>difforge evaluation</h1>
{body}
</body></html>"#
    )
}

fn metrics_table(report: &EvalReport) -> String {
    let mut t = String::from("<h2>Metrics</h2><table><tr><th>features</th><th>Frechet distance</th><th>KID (x 1000)</th><th>precision</th><th>recall</th><th>F1</th><th>density</th><th>coverage</th><th>samples / real</th></tr>");
    for f in &report.metrics {
        let m = &f.manifold;
        let _ = write!(
            t,
            "<tr><td>{} ({})</td><td>{:.4}</td><td>{:.3} ± {:.3} ({} subsets of {})</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{} / {}</td></tr>",
            f.network.metric,
            f.network.name,
            f.frechet_distance,
            1000.0 * f.kid.mean,
            1000.0 * f.kid.std,
            f.kid.subsets,
            f.kid.subset_size,
            m.precision,
            m.recall,
            m.f1,
            m.density,
            m.coverage,
            f.samples,
            f.real
        );
    }
    t + &format!(
        "</table><p class=small>Precision, recall, density and coverage on k = {} nearest-neighbour manifolds.</p>",
        report.metrics.first().map_or(3, |f| f.manifold.k)
    )
}
