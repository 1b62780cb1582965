//! Which shards a `data.path` names: every `*.tar` of a folder, sorted by name, or the files of
//! a brace pattern `DIR/{000000..000099}.tar`; and the class names of the `dataset.json` beside
//! them.

use crate::error::DataError;
use crate::shard_writer::{ShardIndex, INDEX_FILE};
use difforge_core::ConfigError;
use std::path::{Path, PathBuf};

const EXPECTED: &str = "an existing folder of *.tar webdataset shards, or a brace pattern like DIR/{000000..000099}.tar";

/// More shards than this from one pattern is a typo, not a dataset.
const MAX_EXPANDED: u64 = 10_000_000;

/// The shard files of `path`, in stream order.
pub fn resolve_shards(path: &Path) -> Result<Vec<PathBuf>, DataError> {
    let text = path.to_string_lossy();
    if text.contains('{') {
        let shards = expand_braces(&text)?;
        if let Some(missing) = shards.iter().find(|p| !p.is_file()) {
            return Err(ConfigError::new("data.path", &text, format!("a pattern whose shards all exist ({} does not)", missing.display())).into());
        }
        return Ok(shards);
    }
    if !path.is_dir() {
        return Err(ConfigError::new("data.path", path.display(), EXPECTED).into());
    }
    let mut shards = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| DataError::io(path, e))? {
        let file = entry.map_err(|e| DataError::io(path, e))?.path();
        if file.extension().is_some_and(|e| e == "tar") && file.is_file() {
            shards.push(file);
        }
    }
    shards.sort();
    if shards.is_empty() {
        return Err(ConfigError::new("data.path", path.display(), format!("{EXPECTED} (the folder holds no *.tar file)")).into());
    }
    Ok(shards)
}

/// Expands the one `{FIRST..LAST}` range of a pattern, keeping zero padding as bash does: when
/// either bound is written with a leading zero, every number has the wider bound's width.
pub fn expand_braces(pattern: &str) -> Result<Vec<PathBuf>, ConfigError> {
    let bad = |why: &str| ConfigError::new("data.path", pattern, format!("a brace pattern like DIR/{{000000..000099}}.tar ({why})"));
    let open = pattern.find('{').ok_or_else(|| bad("no `{`"))?;
    let close = open + pattern[open..].find('}').ok_or_else(|| bad("no `}` after the `{`"))?;
    let (prefix, range, suffix) = (&pattern[..open], &pattern[open + 1..close], &pattern[close + 1..]);
    if suffix.contains(['{', '}']) {
        return Err(bad("one range only"));
    }
    let (a, b) = range.split_once("..").ok_or_else(|| bad("the range is written {FIRST..LAST}"))?;
    let (first, last) = match (parse_bound(a), parse_bound(b)) {
        (Some(f), Some(l)) => (f, l),
        _ => return Err(bad("FIRST and LAST are whole numbers")),
    };
    if last < first {
        return Err(bad("LAST is smaller than FIRST"));
    }
    if last - first >= MAX_EXPANDED {
        return Err(bad("more than 10 million shards"));
    }
    let padded = |s: &str| s.len() > 1 && s.starts_with('0');
    let width = if padded(a) || padded(b) { a.len().max(b.len()) } else { 0 };
    Ok((first..=last).map(|i| PathBuf::from(format!("{prefix}{i:0width$}{suffix}"))).collect())
}

fn parse_bound(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The class names of the `dataset.json` in the first shard's folder (none without one).
pub fn class_names_beside(shards: &[PathBuf]) -> Result<Vec<String>, DataError> {
    let Some(dir) = shards.first().and_then(|s| s.parent()) else { return Ok(Vec::new()) };
    let file = dir.join(INDEX_FILE);
    let bytes = match std::fs::read(&file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(DataError::io(&file, e)),
    };
    let index: ShardIndex = serde_json::from_slice(&bytes).map_err(|e| DataError::shard(&file, format!("not a shard index ({e})")))?;
    Ok(index.class_names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_follows_the_bounds() {
        let names = |p: &str| expand_braces(p).unwrap().iter().map(|p| p.display().to_string()).collect::<Vec<_>>();
        assert_eq!(names("d/{000008..000011}.tar"), ["d/000008.tar", "d/000009.tar", "d/000010.tar", "d/000011.tar"]);
        assert_eq!(names("{8..10}.tar"), ["8.tar", "9.tar", "10.tar"]);
        assert_eq!(names("{08..10}.tar"), ["08.tar", "09.tar", "10.tar"]);
        assert!(expand_braces("{3..1}.tar").unwrap_err().to_string().contains("LAST is smaller"));
        assert!(expand_braces("{a..b}.tar").is_err());
        assert!(expand_braces("{1..2}/{1..2}.tar").is_err());
    }
}
