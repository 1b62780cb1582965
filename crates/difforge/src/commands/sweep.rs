//! `difforge sweep`: train every combination of a grid, or with `--checkpoint` evaluate every
//! combination of sampler settings on a trained model.

use crate::cli::SweepArgs;
use difforge_core::ConfigError;
use difforge_eval::cache::FeatureCache;
use difforge_eval::dataset::SplitChoice;
use difforge_eval::evaluate::{EvalData, EvalOptions};
use difforge_eval::features::FeatureNet;
use difforge_eval::metrics::kid::KidConfig;
use difforge_eval::metrics::manifold::DEFAULT_NEAREST_K;
use difforge_eval::sampler_sweep;
use difforge_model::checkpoint;
use difforge_train::sweep::{markdown, parse_grid, sweep, SweepOptions};
use std::path::{Path, PathBuf};

pub fn run(args: SweepArgs) -> anyhow::Result<()> {
    let grid = args.grids.iter().map(|g| parse_grid(g)).collect::<Result<Vec<_>, _>>()?;
    if let Some(ckpt) = &args.checkpoint {
        return sampler(&args, ckpt, &grid);
    }
    let base = super::config::load(&args.config)?;
    let name = args.config.config.as_deref().and_then(|p| p.file_stem()).map_or("digits".to_string(), |s| s.to_string_lossy().into_owned());
    let out_dir = args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(format!("sweep-{name}")));
    let stop = super::stop_on_signals()?;
    let opts = SweepOptions { out_dir: out_dir.clone(), budget_steps: args.budget_steps, halving: args.halving, stop };
    let board = sweep(&base, &grid, &opts)?;
    if args.json {
        return super::print_json(&board);
    }
    print!("{}", markdown(&board));
    println!("leaderboard: {} and {}", out_dir.join("leaderboard.md").display(), out_dir.join("leaderboard.json").display());
    Ok(())
}

/// The classifier of the run that `path` (a run folder, or a checkpoint folder in one) belongs
/// to, if it has one.
fn run_classifier(path: &Path) -> Option<PathBuf> {
    let run_of_checkpoint = path.parent().and_then(Path::parent).map(Path::to_path_buf);
    [Some(path.to_path_buf()), run_of_checkpoint]
        .into_iter()
        .flatten()
        .map(|p| p.join("classifier"))
        .find(|dir| dir.join(difforge_eval::judge::META_FILE).is_file())
}

fn sampler(args: &SweepArgs, path: &Path, grid: &[(String, Vec<String>)]) -> anyhow::Result<()> {
    if !(2..=50_000).contains(&args.n) {
        return Err(ConfigError::new("--n", args.n, "2..=50000").into());
    }
    let dir = checkpoint::resolve(path)?;
    let cfg = checkpoint::read_config(&dir)?;
    let step = checkpoint::read_state(&dir)?.step;
    let device = super::sample::device(&args.device, &cfg.train)?;
    let model = checkpoint::load_model(&dir, &cfg, device)?;
    let opts = EvalOptions {
        n: args.n,
        seed: 0,
        sampler: cfg.sample.clone(),
        use_ema: true,
        batch: 100,
        feature_batch: 50,
        k: DEFAULT_NEAREST_K,
        kid: KidConfig { subsets: 100, subset_size: 1000, seed: 0, ..KidConfig::default() },
        consistency_sets: 1,
        memorisation_threshold: 0.5,
        show_pairs: 0,
        real_data: cfg.data.clone(),
        real_split: SplitChoice::Val,
        classifier: args.classifier.clone().or_else(|| run_classifier(path)),
        samples_dir: None,
        clip_model: None,
    };
    let nets = vec![FeatureNet::efficientnet(None, device)?];
    let cache = FeatureCache::new(FeatureCache::default_dir());
    let data = EvalData::load(&cfg, &opts)?;
    let board = sampler_sweep::sweep(&model, &dir, step, &nets, &cache, &data, &opts, grid, &args.metric)?;
    let out_dir = args.out.clone().unwrap_or_else(|| PathBuf::from("runs/sweep-sampler"));
    let page = sampler_sweep::write(&board, &out_dir)?;
    if args.json {
        return super::print_json(&board);
    }
    print!("{}", sampler_sweep::markdown(&board));
    println!("report: {} (leaderboard.md, leaderboard.json, precision-recall.png beside it)", page.display());
    Ok(())
}
