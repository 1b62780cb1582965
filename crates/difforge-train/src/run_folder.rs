//! The run folder a training owns: locked against a second trainer (the lock dies with its
//! process), refused when it already holds a run that is neither resumed nor explicitly
//! overwritten, and cleaned of what a crashed writer left (without losing a complete checkpoint).

use crate::error::TrainError;
use difforge_core::ConfigError;
use difforge_model::checkpoint;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file of a run folder; it holds the owner's process id.
pub const LOCK_FILE: &str = ".lock";

/// How a training uses its folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// A new run: the folder must not hold one.
    New,
    /// Continue the run in the folder.
    Resume,
    /// Replace the run in the folder (its files are deleted first).
    Overwrite,
}

/// What a run writes at the top of its folder (everything else is left alone).
const RUN_FILES: &[&str] = &[
    "config.toml",
    "summary.json",
    "metrics.jsonl",
    "validation.jsonl",
    "eval.jsonl",
    "data-check.json",
    "lora.safetensors",
    "class_images",
    "checkpoints",
    "samples",
    "vae",
    "reconstructions.png",
    "vae-parity.safetensors",
];

/// The run files present in `dir` (TensorBoard event files included).
fn run_content(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            RUN_FILES.contains(&name.as_str()) || name.starts_with("events.out.tfevents.")
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// A locked run folder; the lock is released when this is dropped (or the process ends).
#[derive(Debug)]
pub struct RunFolder {
    path: PathBuf,
    _lock: File,
}

impl RunFolder {
    /// Creates or opens `path` for training, taking its lock first.
    pub fn open(path: &Path, how: Use) -> Result<RunFolder, TrainError> {
        std::fs::create_dir_all(path).map_err(|e| TrainError::io(path, e))?;
        let lock = take_lock(path)?;
        let existing = run_content(path);
        match how {
            Use::New if !existing.is_empty() => {
                let names: Vec<String> = existing.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
                return Err(ConfigError::new(
                    "--out",
                    path.display(),
                    format!("a folder without a run, but it holds {}: continue that run with --resume, or replace it with --overwrite", names.join(", ")),
                )
                .into());
            }
            Use::Overwrite => {
                for p in &existing {
                    let removed = if p.is_dir() { std::fs::remove_dir_all(p) } else { std::fs::remove_file(p) };
                    removed.map_err(|e| TrainError::io(p, e))?;
                }
            }
            _ => {}
        }
        checkpoint::recover_temporaries(path)?;
        Ok(RunFolder { path: path.to_path_buf(), _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Takes the folder's lock or says which process holds it.
fn take_lock(dir: &Path) -> Result<File, TrainError> {
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(|e| TrainError::io(&path, e))?;
    if file.try_lock().is_err() {
        let mut owner = String::new();
        let _ = file.read_to_string(&mut owner);
        let owner = owner.trim();
        let who = if owner.is_empty() { "another difforge process".to_string() } else { format!("difforge process {owner}") };
        return Err(ConfigError::new("--out", dir.display(), format!("a folder no other training is using: {who} is training into it")).into());
    }
    file.set_len(0)
        .and_then(|_| file.rewind())
        .and_then(|_| write!(file, "{}", std::process::id()))
        .and_then(|_| file.flush())
        .map_err(|e| TrainError::io(&path, e))?;
    Ok(file)
}
