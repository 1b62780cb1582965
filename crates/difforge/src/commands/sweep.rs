//! `difforge sweep`.

use crate::cli::SweepArgs;
use difforge_train::sweep::{markdown, parse_grid, sweep, SweepOptions};
use std::path::PathBuf;

pub fn run(args: SweepArgs) -> anyhow::Result<()> {
    let base = super::config::load(&args.config)?;
    let grid = args.grids.iter().map(|g| parse_grid(g)).collect::<Result<Vec<_>, _>>()?;
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
