//! Sweeping sampler settings on a trained checkpoint, without retraining: every combination of a
//! grid of `sample.*` values is evaluated like `difforge eval` (same seeds, same real images) and
//! ranked by one metric, with a table, precision-vs-recall and accuracy-vs-FD plots and a page.

use crate::cache::FeatureCache;
use crate::evaluate::{evaluate, EvalData, EvalOptions, EvalReport};
use crate::features::FeatureNet;
use crate::EvalError;
use difforge_config::overrides::combinations;
use difforge_config::{eval_metric, RunConfig};
use difforge_core::ConfigError;
use difforge_diffusion::SamplerConfig;
use difforge_model::DiffusionModel;
use difforge_report::html::Page;
use difforge_report::scatter_png;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One setting's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct SettingResult {
    pub rank: usize,
    /// The `sample.KEY=VALUE` assignments of this setting.
    pub settings: Vec<String>,
    pub sampler: SamplerConfig,
    /// The ranking metric's value.
    pub value: Option<f64>,
    pub fd_effnet: f64,
    pub kid: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub density: f64,
    pub coverage: f64,
    pub class_accuracy: Option<f64>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SamplerLeaderboard {
    pub checkpoint: PathBuf,
    pub step: u64,
    pub metric: String,
    pub higher_is_better: bool,
    pub samples: usize,
    pub results: Vec<SettingResult>,
}

/// The sampler settings of each combination of `grid` (only `sample.*` keys), checked like the
/// config they override.
pub fn settings(cfg: &RunConfig, grid: &[(String, Vec<String>)]) -> Result<Vec<(Vec<String>, SamplerConfig)>, ConfigError> {
    if let Some((key, _)) = grid.iter().find(|(k, _)| !k.starts_with("sample.")) {
        return Err(ConfigError::new("--grid", key, "a sample.* key: a trained checkpoint's sampler settings are swept without retraining"));
    }
    let base = cfg.to_toml();
    combinations(grid).into_iter().map(|sets| Ok((sets.clone(), RunConfig::from_toml(&base, &sets, &format!("--grid {}", sets.join(" ")))?.sample))).collect()
}

fn metric_of(report: &EvalReport, name: &str) -> Option<f64> {
    let main = report.metrics.first()?;
    let m = &main.manifold;
    match name {
        "fd_effnet" => Some(main.frechet_distance),
        "fid" => report.metrics.iter().find(|f| f.network.metric == "FID").map(|f| f.frechet_distance),
        "kid" => Some(main.kid.mean),
        "precision" => Some(m.precision),
        "recall" => Some(m.recall),
        "f1" => Some(m.f1),
        "density" => Some(m.density),
        "coverage" => Some(m.coverage),
        "class_accuracy" => report.classes.as_ref().map(|c| c.accuracy),
        _ => None,
    }
}

/// Evaluates every setting and ranks them by `metric` (an evaluation metric name, e.g.
/// "fd_effnet" or "recall").
#[allow(clippy::too_many_arguments)]
pub fn sweep(
    model: &DiffusionModel,
    checkpoint: &Path,
    step: u64,
    nets: &[FeatureNet],
    cache: &FeatureCache,
    data: &EvalData,
    base: &EvalOptions,
    grid: &[(String, Vec<String>)],
    metric: &str,
) -> Result<SamplerLeaderboard, EvalError> {
    let (name, higher_is_better) = eval_metric(&format!("eval.{metric}")).ok_or_else(|| {
        let names: Vec<&str> = difforge_config::EVAL_METRICS.iter().map(|(m, _)| *m).collect();
        ConfigError::new("--metric", metric, difforge_core::one_of(&names))
    })?;
    let mut results = Vec::new();
    for (i, (sets, sampler)) in settings(model.config(), grid)?.into_iter().enumerate() {
        tracing::info!("setting {} of {}: {}", i + 1, grid.iter().map(|(_, v)| v.len()).product::<usize>(), sets.join(" "));
        let start = Instant::now();
        let opts = EvalOptions { sampler: sampler.clone(), consistency_sets: 1, ..base.clone() };
        let (report, _) = evaluate(model, checkpoint.to_path_buf(), step, nets, cache, data, &opts)?;
        let main = report.metrics.first().ok_or_else(|| EvalError::Input("no feature network".into()))?;
        results.push(SettingResult {
            rank: 0,
            settings: sets,
            value: metric_of(&report, name),
            fd_effnet: main.frechet_distance,
            kid: main.kid.mean,
            precision: main.manifold.precision,
            recall: main.manifold.recall,
            f1: main.manifold.f1,
            density: main.manifold.density,
            coverage: main.manifold.coverage,
            class_accuracy: report.classes.as_ref().map(|c| c.accuracy),
            seconds: start.elapsed().as_secs_f64(),
            sampler,
        });
    }
    if results.iter().all(|r| r.value.is_none()) {
        return Err(ConfigError::new("--metric", metric, "a metric this evaluation computes (class_accuracy needs a classifier, fid Inception weights)").into());
    }
    let key = |r: &SettingResult| r.value.map_or(f64::INFINITY, |v| if higher_is_better { -v } else { v });
    results.sort_by(|a, b| key(a).total_cmp(&key(b)));
    for (k, r) in results.iter_mut().enumerate() {
        r.rank = k + 1;
    }
    Ok(SamplerLeaderboard { checkpoint: checkpoint.to_path_buf(), step, metric: name.to_string(), higher_is_better, samples: base.n, results })
}

/// A short name for a setting in plots: its values without the `sample.` prefix.
fn label(r: &SettingResult) -> String {
    r.settings.iter().map(|s| s.trim_start_matches("sample.").to_string()).collect::<Vec<_>>().join(" ")
}

pub fn markdown(board: &SamplerLeaderboard) -> String {
    let mut md = "| rank | setting | FD-EffNet | precision | recall | coverage | class accuracy | time (s) |\n|---|---|---|---|---|---|---|---|\n".to_string();
    for r in &board.results {
        md += &format!(
            "| {} | `{}` | {:.3} | {:.3} | {:.3} | {:.3} | {} | {:.0} |\n",
            r.rank,
            label(r),
            r.fd_effnet,
            r.precision,
            r.recall,
            r.coverage,
            r.class_accuracy.map_or("-".to_string(), |a| format!("{:.1}%", 100.0 * a)),
            r.seconds
        );
    }
    md
}

/// Writes leaderboard.json, leaderboard.md, the plots and report.html into `dir`.
pub fn write(board: &SamplerLeaderboard, dir: &Path) -> Result<PathBuf, EvalError> {
    std::fs::create_dir_all(dir).map_err(|e| EvalError::write(dir, e))?;
    let write = |name: &str, bytes: &[u8]| difforge_core::write_atomic(&dir.join(name), bytes).map_err(|e| EvalError::write(dir.join(name), e));
    write("leaderboard.json", &serde_json::to_vec_pretty(board).map_err(|e| EvalError::write(dir.join("leaderboard.json"), e))?)?;
    write("leaderboard.md", markdown(board).as_bytes())?;
    // Points are named by their rank: settings' full names collide in a crowded plot, and the
    // leaderboard beside it says which is which.
    let rank = |r: &SettingResult| format!("#{}", r.rank);
    let pr: Vec<(f64, f64, String)> = board.results.iter().map(|r| (r.precision, r.recall, rank(r))).collect();
    scatter_png(&dir.join("precision-recall.png"), "Precision and recall per sampler setting (#rank)", "precision", "recall", &pr)?;
    let af: Vec<(f64, f64, String)> = board.results.iter().filter_map(|r| Some((r.fd_effnet, r.class_accuracy?, rank(r)))).collect();
    if !af.is_empty() {
        scatter_png(
            &dir.join("accuracy-fd.png"),
            "Class accuracy and Frechet distance per setting (#rank)",
            "FD-EffNet (lower is better)",
            "class accuracy",
            &af,
        )?;
    }
    let mut page = Page::new("difforge sampler sweep");
    page.paragraph(&format!(
        "Checkpoint {} (step {}); {} samples per setting, ranked by {} ({} is better).",
        board.checkpoint.display(),
        board.step,
        board.samples,
        board.metric,
        if board.higher_is_better { "higher" } else { "lower" }
    ));
    let rows: Vec<Vec<String>> = board
        .results
        .iter()
        .map(|r| {
            vec![
                r.rank.to_string(),
                label(r),
                format!("{:.3}", r.fd_effnet),
                format!("{:.3}", r.precision),
                format!("{:.3}", r.recall),
                format!("{:.3}", r.coverage),
                r.class_accuracy.map_or("-".to_string(), |a| format!("{:.1}%", 100.0 * a)),
            ]
        })
        .collect();
    page.table(&["rank", "setting", "FD-EffNet", "precision", "recall", "coverage", "class accuracy"], &rows);
    for (file, caption) in [
        ("precision-recall.png", "Precision against recall: up and to the right is better."),
        ("accuracy-fd.png", "Class accuracy against Frechet distance: up and to the left is better."),
    ] {
        if let Ok(bytes) = std::fs::read(dir.join(file)) {
            page.figure(file, "image/png", &bytes, caption, false);
        }
    }
    let path = dir.join("report.html");
    write("report.html", page.render().as_bytes())?;
    Ok(path)
}
