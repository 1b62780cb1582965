//! Machine-readable records: one JSON object per line, appended and flushed as they happen so
//! that a crash loses at most the line being written.

use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct JsonLines {
    file: File,
    path: PathBuf,
}

impl JsonLines {
    pub fn append(path: &Path) -> std::io::Result<JsonLines> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(JsonLines { file, path: path.to_path_buf() })
    }

    pub fn write<T: Serialize>(&mut self, record: &T) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.flush()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Drops the records of steps after `step` (those a resumed run will redo), atomically.
pub fn truncate_after_step(path: &Path, step: u64) -> std::io::Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: String = text
        .lines()
        .filter(|line| serde_json::from_str::<serde_json::Value>(line).ok().and_then(|v| v["step"].as_u64()).is_some_and(|s| s <= step))
        .map(|l| format!("{l}\n"))
        .collect();
    if kept.len() != text.len() {
        difforge_core::write_atomic(path, kept.as_bytes())?;
    }
    Ok(())
}
