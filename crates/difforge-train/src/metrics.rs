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
