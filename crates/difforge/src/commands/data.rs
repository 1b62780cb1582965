//! `difforge data check` and `difforge data shard`.

use crate::cli::{DataCheckArgs, DataShardArgs};
use difforge_core::ConfigError;
use difforge_data::check::{check_folder, fix_report, CheckOptions, DataReport, Problem};
use difforge_data::write_shards;

pub fn check(args: &DataCheckArgs) -> anyhow::Result<()> {
    if args.near_distance > 3 {
        return Err(ConfigError::new("--near-distance", args.near_distance, "0..=3").into());
    }
    if !(args.imbalance_threshold.is_finite() && args.imbalance_threshold >= 1.0) {
        return Err(ConfigError::new("--imbalance-threshold", args.imbalance_threshold, "a ratio of at least 1").into());
    }
    if !(args.channels == 1 || args.channels == 3) {
        return Err(ConfigError::new("--channels", args.channels, "1 (grey) or 3 (RGB)").into());
    }
    if !(4..=1024).contains(&args.model_size) || args.pad > 1024 || args.max_pixels == 0 {
        return Err(ConfigError::new("--model-size", args.model_size, "4..=1024, with --pad at most 1024 and --max-pixels at least 1").into());
    }
    let opts = CheckOptions {
        model_size: args.model_size,
        channels: args.channels,
        pad: args.pad,
        max_pixels: args.max_pixels,
        imbalance_threshold: args.imbalance_threshold,
        near_duplicate_distance: args.near_distance,
        ..Default::default()
    };
    let report = check_folder(&args.path, &opts)?;
    if let Some(file) = &args.fix_report {
        let bytes = serde_json::to_vec_pretty(&fix_report(&report))?;
        difforge_core::write_atomic(file, &bytes)?;
    }
    if args.json {
        super::print_json(&report)?;
    } else {
        print_text(&report, args.show);
    }
    if report.usable == 0 {
        anyhow::bail!("{}: no usable image among {} file(s)", args.path.display(), report.files_found);
    }
    Ok(())
}

/// At most `show` lines of one kind, then how many more there are.
fn lines<T>(label: &str, items: &[T], show: usize, line: impl Fn(&T) -> String) {
    for item in items.iter().take(show) {
        println!("  {label:<14} {}", line(item));
    }
    if items.len() > show {
        println!("  {label:<14} ... and {} more (all of them in --json and --fix-report)", items.len() - show);
    }
}

fn print_text(r: &DataReport, show: usize) {
    println!("{}: {} image file(s), {} usable", r.root, r.files_found, r.usable);
    let problem = |p: &Problem| format!("{}: {}", p.path, p.reason);
    lines("unreadable", &r.unreadable, show, problem);
    lines("too large", &r.too_large, show, problem);
    lines("not searched", &r.skipped_folders, show, problem);
    lines("duplicates", &r.exact_duplicates, show, |g| g.join(" = "));
    lines("near-duplicates", &r.near_duplicates, show, |g| {
        let listed: Vec<&str> = g.members.iter().take(4).map(String::as_str).collect();
        let more = if g.members.len() > 4 { format!(" and {} more", g.members.len() - 4) } else { String::new() };
        format!("{} images look alike: {}{more}", g.members.len(), listed.join(", "))
    });
    lines("small", &r.smaller_than_model, show, problem);
    lines("near-constant", &r.outliers, show, problem);
    let line = |m: &std::collections::BTreeMap<String, usize>| m.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ");
    println!("  colour modes   {}", line(&r.color_modes));
    println!("  shorter side   {}", line(&r.size_histogram));
    println!("  aspect ratio   {}", line(&r.aspect_histogram));
    if !r.class_counts.is_empty() {
        let classes: Vec<(&String, &usize)> = r.class_counts.iter().collect();
        let shown: Vec<String> = classes.iter().take(show.max(1) * 2).map(|(k, v)| format!("{k}: {v}")).collect();
        let more = if classes.len() > shown.len() { format!(", ... ({} classes)", classes.len()) } else { String::new() };
        println!("  classes        {}{more} (imbalance ratio {:.1})", shown.join(", "), r.imbalance_ratio.unwrap_or(1.0));
    }
    if let Some(c) = r.caption_coverage {
        println!("  captions       {:.0}% of usable images", 100.0 * c);
    }
    for w in &r.warnings {
        println!("warning: {w}");
    }
}

/// `difforge data shard`: the folder as webdataset shards, then what was written.
pub fn shard(args: &DataShardArgs) -> anyhow::Result<()> {
    let report = write_shards(&args.path, &args.out, args.shard_size)?;
    if args.json {
        return super::print_json(&report);
    }
    let index = &report.index;
    println!("{}: {} image(s) in {} shard(s) in {}", args.path.display(), index.images, index.shards.len(), args.out.display());
    let shown = 20;
    for (name, n) in index.shards.iter().zip(&index.images_per_shard).take(shown) {
        println!("  {name}  {n} image(s)");
    }
    if index.shards.len() > shown {
        println!("  ... and {} more shard(s) (all of them in --json and dataset.json)", index.shards.len() - shown);
    }
    if !index.class_names.is_empty() {
        println!("  classes: {}", index.class_names.join(", "));
    }
    for s in &report.skipped {
        println!("warning: skipped {s}");
    }
    Ok(())
}
