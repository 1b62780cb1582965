//! `difforge data synth shapes` (a captioned synthetic set with withheld colour-kind combos) and
//! `difforge data judge` (how well a folder's images show what their captions ask for).

use clap::{Args, Subcommand};
use difforge_data::source::folder::list_images;
use difforge_data::source::metadata::CaptionSource;
use difforge_data::synth::shapes::{default_withhold, MANIFEST_FILE};
use difforge_data::synth::{generate, parse_withhold, Combo, ShapesConfig, ShapesManifest, ShapesReport};
use difforge_eval::shape_judge::{read_rgb, AdherenceReport, AdherenceTally, AttributeScore, GroupScores, ATTRIBUTES};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum SynthCommand {
    /// One coloured shape per image (circle, square, triangle, diamond; red, green, blue, yellow,
    /// purple; small or large; a 3x3 grid of positions; white, black or grey background), with a
    /// caption sidecar each ("a small red triangle at the top left on a white background"),
    /// shapes.json and evaluation prompts (prompts-seen.txt, prompts-withheld.txt).
    Shapes(ShapesArgs),
}

#[derive(Args)]
pub struct ShapesArgs {
    /// The folder to write; it must be new, empty or an earlier shapes set (else --overwrite).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of images.
    #[arg(long)]
    pub n: usize,
    /// Image side in pixels (24..=256).
    #[arg(long, default_value_t = 32)]
    pub size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Colour-kind combinations kept out of the images, e.g. "red triangle,blue circle", or none
    /// (default: red triangle, blue circle, yellow square).
    #[arg(long, value_name = "LIST")]
    pub withhold: Option<String>,
    /// Write into a folder that is not empty and not a shapes set: files named like the set's
    /// (NNNNN.png, NNNNN.txt, shapes.json, prompts-*.txt) are replaced, others are kept.
    #[arg(long)]
    pub overwrite: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct DataJudgeArgs {
    /// A folder of images with caption sidecars (.txt), e.g. a shapes set or generated samples.
    pub path: PathBuf,
    /// A shapes.json whose withheld combos are scored apart (default: the folder's, if any).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Mistakes listed in the text output.
    #[arg(long, default_value_t = 10)]
    pub show: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn run_synth(command: SynthCommand) -> anyhow::Result<()> {
    match command {
        SynthCommand::Shapes(args) => shapes(&args),
    }
}

fn shapes(args: &ShapesArgs) -> anyhow::Result<()> {
    let withhold = match &args.withhold {
        Some(list) => parse_withhold(list)?,
        None => default_withhold(),
    };
    let config = ShapesConfig { n: args.n, size: args.size, seed: args.seed, withhold };
    let report = generate(&config, &args.out, args.overwrite)?;
    if args.json {
        return super::print_json(&report);
    }
    print_synth(&report);
    Ok(())
}

fn combo_list(combos: &[Combo]) -> String {
    if combos.is_empty() {
        "none".to_string()
    } else {
        combos.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ")
    }
}

fn print_synth(r: &ShapesReport) {
    println!("{}: {} image(s) of {}x{} pixels (seed {})", r.out.display(), r.n, r.size, r.size, r.seed);
    println!("  withheld       {}", combo_list(&r.withheld));
    println!("  combos drawn   {} of {}", r.combo_counts.len(), Combo::all().len() - r.withheld.len());
    println!("  prompts        {} seen, {} withheld (prompts-seen.txt, prompts-withheld.txt)", r.seen_prompts, r.withheld_prompts);
}

/// What `data judge` prints with --json.
#[derive(Serialize)]
struct JudgeOutput {
    root: String,
    images_found: usize,
    judged: usize,
    without_caption: usize,
    unreadable: Vec<String>,
    manifest: Option<String>,
    report: AdherenceReport,
    /// The image file of each of `report.mistakes`.
    mistake_files: Vec<String>,
}

/// The withheld combos to score apart: from --manifest, else the folder's shapes.json if it has one.
fn withheld_combos(args: &DataJudgeArgs) -> anyhow::Result<Option<(PathBuf, Vec<Combo>)>> {
    let path = match &args.manifest {
        Some(p) => p.clone(),
        None => {
            let own = args.path.join(MANIFEST_FILE);
            if !own.is_file() {
                return Ok(None);
            }
            own
        }
    };
    let manifest = ShapesManifest::read(&path)?;
    Ok(Some((path, manifest.withheld)))
}

/// The caption of an image: its sidecar's text, if it has a non-empty one, else the prompt
/// `difforge sample` recorded in the PNG it generated.
fn caption_of(image: &Path) -> Option<String> {
    let text = std::fs::read_to_string(CaptionSource::default().sidecar(image)).ok().or_else(|| difforge_model::images::generated_prompt(image))?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

pub fn judge(args: &DataJudgeArgs) -> anyhow::Result<()> {
    let listing = list_images(&args.path)?;
    let manifest = withheld_combos(args)?;
    let mut tally = AdherenceTally::new(manifest.as_ref().map(|(_, w)| w.as_slice()));
    let (mut judged_files, mut without_caption, mut unreadable) = (Vec::new(), 0, Vec::new());
    for file in &listing.files {
        let Some(caption) = caption_of(file) else {
            without_caption += 1;
            continue;
        };
        match read_rgb(file) {
            Ok(img) => {
                tally.add(&caption, &img);
                judged_files.push(file.strip_prefix(&args.path).unwrap_or(file).display().to_string());
            }
            Err(e) => unreadable.push(e.to_string()),
        }
    }
    if judged_files.is_empty() {
        anyhow::bail!(
            "{}: no captioned image to judge ({} image file(s), {without_caption} without a .txt caption beside it, {} unreadable)",
            args.path.display(),
            listing.files.len(),
            unreadable.len()
        );
    }
    let report = tally.finish();
    let mistake_files = report.mistakes.iter().map(|m| judged_files[m.item].clone()).collect();
    let out = JudgeOutput {
        root: args.path.display().to_string(),
        images_found: listing.files.len(),
        judged: judged_files.len(),
        without_caption,
        unreadable,
        manifest: manifest.map(|(p, _)| p.display().to_string()),
        report,
        mistake_files,
    };
    if args.json {
        return super::print_json(&out);
    }
    print_judge(&out, args.show);
    Ok(())
}

fn percent(score: &AttributeScore) -> String {
    match score.accuracy() {
        Some(a) => format!("{:5.1}%  ({}/{})", 100.0 * a, score.correct, score.named),
        None => "  -     (not named by any caption)".to_string(),
    }
}

/// One line for a group: its adherence and each attribute's accuracy.
fn group_line(label: &str, g: &GroupScores) -> String {
    let Some(adherence) = g.adherence() else {
        return format!("  {label:<12} no image");
    };
    let parts: Vec<String> = ATTRIBUTES.iter().zip(g.attributes()).filter_map(|(name, s)| s.accuracy().map(|a| format!("{name} {:.1}%", 100.0 * a))).collect();
    format!("  {label:<12} adherence {:.1}% of {} image(s); {}", 100.0 * adherence, g.images, parts.join(", "))
}

fn print_judge(out: &JudgeOutput, show: usize) {
    let r = &out.report;
    println!(
        "{}: {} image(s) judged ({} without a caption, {} unreadable, {} caption(s) naming no attribute)",
        out.root,
        out.judged,
        out.without_caption,
        out.unreadable.len(),
        r.unparsed
    );
    for (name, score) in ATTRIBUTES.iter().zip(r.overall.attributes()) {
        println!("  {name:<12} {}", percent(&score));
    }
    let all = AttributeScore { named: r.overall.images, correct: r.overall.all_correct };
    println!("  {:<12} {}  images with every attribute their caption names", "adherence", percent(&all));
    if let (Some(seen), Some(withheld)) = (&r.seen, &r.withheld) {
        println!("  withheld combos: {} (from {})", combo_list(&r.withheld_combos), out.manifest.as_deref().unwrap_or("?"));
        println!("{}", group_line("seen", seen));
        println!("{}", group_line("withheld", withheld));
    }
    for (m, file) in r.mistakes.iter().zip(&out.mistake_files).take(show) {
        println!("  mistake      {file}: asked {:?}, saw {:?}", m.caption, m.judged);
    }
    for u in &out.unreadable {
        println!("warning: unreadable {u}");
    }
}
