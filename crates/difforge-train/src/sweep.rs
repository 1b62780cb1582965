//! Hyperparameter sweeps: every combination of a grid, trained one after another with
//! validation (and early stopping if configured), ranked by the validation metric. With
//! successive halving, all trials get a small budget, the better half continues (resumed, not
//! restarted) with double the budget, and so on until one budget is the full one.

use crate::error::TrainError;
use crate::trainer::{train, TrainOptions, TrainSummary};
pub use difforge_config::overrides::{combinations, parse_grid};
use difforge_config::{MetricMode, RunConfig};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone, Serialize)]
pub struct TrialResult {
    pub rank: usize,
    pub name: String,
    pub settings: Vec<String>,
    pub metric: String,
    pub value: Option<f64>,
    pub best_step: Option<u64>,
    pub steps: u64,
    pub stopped_because: String,
    pub wall_time_s: f64,
    pub run_dir: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct Leaderboard {
    pub metric: String,
    pub mode: MetricMode,
    pub halving: bool,
    pub trials: Vec<TrialResult>,
}

pub struct SweepOptions {
    pub out_dir: PathBuf,
    pub budget_steps: Option<u64>,
    pub halving: bool,
    pub stop: Arc<AtomicBool>,
}

struct Trial {
    name: String,
    settings: Vec<String>,
    config: RunConfig,
    summary: Option<TrainSummary>,
    wall: f64,
}

fn run_trial(trial: &mut Trial, dir: &Path, steps: u64, stop: &Arc<AtomicBool>) -> Result<(), TrainError> {
    let resume = trial.summary.is_some();
    let mut cfg = trial.config.clone();
    cfg.train.steps = steps;
    let opts = TrainOptions {
        overwrite: false,
        out_dir: dir.to_path_buf(),
        resume,
        resume_sets: if resume { vec![format!("train.steps={steps}")] } else { Vec::new() },
        stop: stop.clone(),
        evaluator: None,
    };
    let summary = train(cfg, opts)?;
    trial.wall += summary.wall_time_s;
    tracing::info!(
        "sweep: {} [{}] step {}: {} = {}",
        trial.name,
        trial.settings.join(" "),
        summary.final_step,
        trial.config.train.early_stop_metric,
        summary.best.as_ref().map_or("-".to_string(), |b| format!("{:.6}", b.value))
    );
    trial.summary = Some(summary);
    Ok(())
}

fn metric_of(t: &Trial) -> Option<f64> {
    t.summary.as_ref().and_then(|s| s.best.as_ref()).map(|b| b.value)
}

/// Trial indices sorted best first; trials without a value go last.
fn rank(trials: &[Trial], indices: &[usize], mode: MetricMode) -> Vec<usize> {
    let key = |i: &usize| metric_of(&trials[*i]).map(|v| if mode == MetricMode::Min { v } else { -v }).unwrap_or(f64::INFINITY);
    let mut sorted = indices.to_vec();
    sorted.sort_by(|a, b| key(a).total_cmp(&key(b)));
    sorted
}

pub fn sweep(base: &RunConfig, grid: &[(String, Vec<String>)], opts: &SweepOptions) -> Result<Leaderboard, TrainError> {
    let base_toml = base.to_toml();
    let mut trials = Vec::new();
    for (i, settings) in combinations(grid).into_iter().enumerate() {
        let mut config = RunConfig::from_toml(&base_toml, &settings, &format!("trial {i} ({})", settings.join(" ")))?;
        if config.train.val_every == 0 {
            config.train.val_every = (config.train.steps / 5).max(1);
        }
        trials.push(Trial { name: format!("trial-{i:03}"), settings, config, summary: None, wall: 0.0 });
    }
    let full = opts.budget_steps.unwrap_or(base.train.steps);
    let mode = base.train.early_stop_mode;
    let mut rungs = vec![full];
    if opts.halving {
        let mut budget = full;
        let mut n = trials.len();
        while n > 1 && budget > 1 {
            budget /= 2;
            n = n.div_ceil(2);
            rungs.insert(0, budget.max(1));
        }
    }
    let mut alive: Vec<usize> = (0..trials.len()).collect();
    for (r, &steps) in rungs.iter().enumerate() {
        for &i in &alive {
            if opts.stop.load(Ordering::SeqCst) {
                break;
            }
            let dir = opts.out_dir.join(&trials[i].name);
            run_trial(&mut trials[i], &dir, steps, &opts.stop)?;
        }
        if r + 1 < rungs.len() {
            let ranked = rank(&trials, &alive, mode);
            alive = ranked[..ranked.len().div_ceil(2)].to_vec();
        }
    }
    let all: Vec<usize> = (0..trials.len()).collect();
    let results = rank(&trials, &all, mode)
        .into_iter()
        .map(|i| &trials[i])
        .enumerate()
        .map(|(k, t)| TrialResult {
            rank: k + 1,
            name: t.name.clone(),
            settings: t.settings.clone(),
            metric: t.config.train.early_stop_metric.clone(),
            value: metric_of(t),
            best_step: t.summary.as_ref().and_then(|s| s.best.as_ref()).map(|b| b.step),
            steps: t.summary.as_ref().map_or(0, |s| s.final_step),
            stopped_because: t.summary.as_ref().map_or("not run".into(), |s| s.stopped_because.clone()),
            wall_time_s: t.wall,
            run_dir: opts.out_dir.join(&t.name),
        })
        .collect();
    let board = Leaderboard { metric: base.train.early_stop_metric.clone(), mode, halving: opts.halving, trials: results };
    write_leaderboard(&board, &opts.out_dir)?;
    Ok(board)
}

pub fn markdown(board: &Leaderboard) -> String {
    let mut md =
        format!("| rank | trial | settings | {} | best step | steps | stopped because | time (s) |\n|---|---|---|---|---|---|---|---|\n", board.metric);
    for t in &board.trials {
        md += &format!(
            "| {} | {} | `{}` | {} | {} | {} | {} | {:.1} |\n",
            t.rank,
            t.name,
            t.settings.join(" "),
            t.value.map_or("-".into(), |v| format!("{v:.6}")),
            t.best_step.map_or("-".into(), |s| s.to_string()),
            t.steps,
            t.stopped_because,
            t.wall_time_s
        );
    }
    md
}

fn write_leaderboard(board: &Leaderboard, dir: &Path) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let json = serde_json::to_vec_pretty(board).map_err(|e| TrainError::Other(e.to_string()))?;
    difforge_core::write_atomic(&dir.join("leaderboard.json"), &json).map_err(|e| TrainError::io(dir.join("leaderboard.json"), e))?;
    difforge_core::write_atomic(&dir.join("leaderboard.md"), markdown(board).as_bytes()).map_err(|e| TrainError::io(dir.join("leaderboard.md"), e))
}
