//! `difforge data check` and `difforge data shard`.

use crate::cli::{DataCheckArgs, DataShardArgs};
use difforge_core::ConfigError;
use difforge_data::check::{check_folder, fix_report, CheckOptions, DataReport, Problem, TokenCounter};
use difforge_data::config::check_caption_extension;
use difforge_data::source::metadata::CaptionSource;
use difforge_data::write_shards;
use difforge_nn::sd::tokenizer::{ClipTokenizer, EmbeddedPad};
use std::sync::OnceLock;

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
    check_caption_extension("--caption-extension", &args.caption_extension)?;
    if args.caption_column.trim().is_empty() {
        return Err(ConfigError::new("--caption-column", "\"\"", "a column name such as \"text\"").into());
    }
    let opts = CheckOptions {
        model_size: args.model_size,
        channels: args.channels,
        pad: args.pad,
        max_pixels: args.max_pixels,
        imbalance_threshold: args.imbalance_threshold,
        near_duplicate_distance: args.near_distance,
        captions: CaptionSource { extension: args.caption_extension.clone(), column: args.caption_column.clone() },
        caption_tokens: Some(clip_token_counter()),
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

/// Caption tokens as Stable Diffusion's CLIP tokenizer (built into the binary) counts them, without
/// start and end tokens and without truncation. The tokenizer is built on the first caption.
fn clip_token_counter() -> TokenCounter {
    let tokenizer: OnceLock<Option<ClipTokenizer>> = OnceLock::new();
    TokenCounter::new(move |caption| {
        let tokenizer =
            tokenizer.get_or_init(|| ClipTokenizer::embedded(EmbeddedPad::EndToken).map_err(|e| tracing::warn!("caption tokens not counted: {e}")).ok());
        tokenizer.as_ref().and_then(|t| t.inner().encode(caption, false).ok()).map_or(0, |e| e.get_ids().len())
    })
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
    if let (Some(coverage), Some(c)) = (r.caption_coverage, &r.captions) {
        let ignored = if c.sidecars_ignored > 0 { format!("; {} sidecar file(s) ignored", c.sidecars_ignored) } else { String::new() };
        println!("  captions       {:.0}% of usable images (from {}{ignored})", 100.0 * coverage, c.source);
        if let Some(w) = &c.words {
            println!("  caption words  min {}, median {}, mean {:.1}, max {}", w.min, w.median, w.mean, w.max);
        }
        if !c.top_tags.is_empty() {
            let top: Vec<String> = c.top_tags.iter().take(8).map(|t| format!("{}: {}", t.tag, t.count)).collect();
            let more = if c.distinct_tags > top.len() {
                format!(", ... ({} distinct; the top {} in --json)", c.distinct_tags, c.top_tags.len())
            } else {
                String::new()
            };
            println!("  tags           {}{more}", top.join(", "));
        }
        lines("no caption", &c.missing, show, String::clone);
        lines("empty caption", &c.empty, show, String::clone);
        lines("same caption", &c.duplicates, show, |g| {
            let listed: Vec<&str> = g.members.iter().take(3).map(String::as_str).collect();
            let more = if g.members.len() > 3 { format!(" and {} more", g.members.len() - 3) } else { String::new() };
            format!("{} images: {:?}: {}{more}", g.members.len(), shorten(&g.caption, 60), listed.join(", "))
        });
        lines("long caption", &c.over_token_limit, show, |l| format!("{}: {} tokens (CLIP reads the first {})", l.path, l.tokens, c.token_limit));
    }
    for w in &r.warnings {
        println!("warning: {w}");
    }
}

/// At most `max` characters of `text`, with "..." when cut.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
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
