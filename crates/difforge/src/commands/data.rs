//! `difforge data check`.

use difforge_data::check::{check_folder, fix_report, CheckOptions, DataReport};
use std::path::Path;

pub fn check(path: &Path, model_size: u32, imbalance_threshold: f64, near_distance: u32, fix: Option<&Path>, json: bool) -> anyhow::Result<()> {
    if near_distance > 3 {
        return Err(difforge_core::ConfigError::new("--near-distance", near_distance, "0..=3").into());
    }
    if !(imbalance_threshold.is_finite() && imbalance_threshold >= 1.0) {
        return Err(difforge_core::ConfigError::new("--imbalance-threshold", imbalance_threshold, "a ratio of at least 1").into());
    }
    let opts = CheckOptions { model_size, imbalance_threshold, near_duplicate_distance: near_distance, ..Default::default() };
    let report = check_folder(path, &opts)?;
    if let Some(file) = fix {
        let bytes = serde_json::to_vec_pretty(&fix_report(&report))?;
        difforge_core::write_atomic(file, &bytes)?;
    }
    if json {
        super::print_json(&report)?;
    } else {
        print_text(&report);
    }
    if report.usable == 0 {
        anyhow::bail!("{}: no usable image among {} file(s)", path.display(), report.files_found);
    }
    Ok(())
}

fn print_text(r: &DataReport) {
    println!("{}: {} image file(s), {} usable", r.root.display(), r.files_found, r.usable);
    for p in &r.unreadable {
        println!("  unreadable     {}: {}", p.path.display(), p.reason);
    }
    for g in &r.exact_duplicates {
        let names: Vec<String> = g.iter().map(|p| p.display().to_string()).collect();
        println!("  duplicates     {}", names.join(" = "));
    }
    for n in &r.near_duplicates {
        println!("  near-duplicate {} ~ {} (distance {})", n.a.display(), n.b.display(), n.distance);
    }
    for p in r.smaller_than_model.iter().take(20) {
        println!("  small          {}: {}", p.path.display(), p.reason);
    }
    for p in &r.outliers {
        println!("  outlier        {}: {}", p.path.display(), p.reason);
    }
    let line = |m: &std::collections::BTreeMap<String, usize>| m.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ");
    println!("  colour modes   {}", line(&r.color_modes));
    println!("  shorter side   {}", line(&r.size_histogram));
    println!("  aspect ratio   {}", line(&r.aspect_histogram));
    if !r.class_counts.is_empty() {
        println!("  classes        {} (imbalance ratio {:.1})", line(&r.class_counts), r.imbalance_ratio.unwrap_or(1.0));
    }
    if let Some(c) = r.caption_coverage {
        println!("  captions       {:.0}% of usable images", 100.0 * c);
    }
    for w in &r.warnings {
        println!("warning: {w}");
    }
}
