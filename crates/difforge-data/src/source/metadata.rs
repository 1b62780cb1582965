//! Captions of an image folder, as diffusers and kohya users keep them.
//!
//! - A `metadata.jsonl` or `metadata.csv` at the folder's root, as diffusers' (Hugging Face
//!   datasets') `imagefolder` reads it: a `file_name` column, the image's path relative to the
//!   folder, and a caption column (`data.caption_column`, "text" by default). JSONL has one JSON
//!   object per line; CSV has a header row and RFC 4180 quoting (`"a, b"`, `"say ""hi"""`,
//!   line breaks inside quotes). A row naming a file that does not exist is an error: a metadata
//!   file pointing at missing images is a broken dataset.
//! - A sidecar file beside each image, its name with `data.caption_extension` (".txt" by
//!   default, kohya's ".caption") instead of the image's extension.
//!
//! An image with a metadata row takes its caption from there (a null caption is no caption) and
//! its sidecar is ignored; an image without a row keeps its sidecar's caption. Captions are
//! trimmed.

use crate::error::DataError;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

/// The metadata files looked for at a folder's root.
pub const METADATA_FILES: [&str; 2] = ["metadata.jsonl", "metadata.csv"];

/// The column that names each row's image.
pub const FILE_NAME_COLUMN: &str = "file_name";

/// Missing images named in the error before only their count is given.
const SHOWN_MISSING: usize = 5;

/// Where a folder's captions are read from (`data.caption_extension`, `data.caption_column`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptionSource {
    /// The sidecar extension, with its dot (".txt").
    pub extension: String,
    /// The caption column of metadata.jsonl / metadata.csv.
    pub column: String,
}

impl Default for CaptionSource {
    fn default() -> Self {
        CaptionSource { extension: ".txt".into(), column: "text".into() }
    }
}

impl CaptionSource {
    pub fn of(config: &crate::DataConfig) -> Self {
        CaptionSource { extension: config.caption_extension.clone(), column: config.caption_column.clone() }
    }

    /// The sidecar caption file of an image.
    pub fn sidecar(&self, image: &Path) -> PathBuf {
        image.with_extension(self.extension.strip_prefix('.').unwrap_or(&self.extension))
    }
}

/// The captions of a metadata file, by image path (`root` joined with `file_name`, without `.`
/// components).
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    pub file: PathBuf,
    pub captions: BTreeMap<PathBuf, Option<String>>,
}

/// The caption of every image of a folder.
#[derive(Debug, Clone, Default)]
pub struct FolderCaptions {
    /// One per image, in the order given.
    pub captions: Vec<Option<String>>,
    /// The metadata file read, if the folder has one.
    pub metadata: Option<PathBuf>,
    /// Images with a metadata row whose sidecar file was therefore not read.
    pub sidecars_ignored: usize,
    /// Captions read from sidecar files (images without a metadata row).
    pub from_sidecars: usize,
}

impl FolderCaptions {
    /// Where the captions came from, for reports: the metadata file's name, the sidecar files,
    /// or both with how many each gave.
    pub fn source_name(&self, source: &CaptionSource) -> String {
        let sidecars = format!("{} files", source.extension);
        let Some(file) = &self.metadata else { return sidecars };
        let name = file.file_name().map_or_else(|| file.display().to_string(), |n| n.to_string_lossy().into_owned());
        match self.from_sidecars {
            0 => name,
            n => format!("{name} ({} captions) and {sidecars} ({n})", self.captions.iter().flatten().count() - n),
        }
    }
}

/// `path` without `.` components, so that `root/./a.png` and `root/a.png` are one key.
fn normalized(path: &Path) -> PathBuf {
    path.components().filter(|c| !matches!(c, Component::CurDir)).collect()
}

/// The captions of `files` (images under `root`): from the root's metadata file where it has a
/// row for the image, else from the image's sidecar file.
pub fn folder_captions(root: &Path, files: &[PathBuf], source: &CaptionSource) -> Result<FolderCaptions, DataError> {
    let metadata = read_metadata(root, &source.column)?;
    // (caption, its sidecar was ignored, it came from the sidecar)
    let captions: Vec<(Option<String>, bool, bool)> = files
        .par_iter()
        .map(|file| {
            let sidecar = source.sidecar(file);
            Ok(match metadata.as_ref().and_then(|m| m.captions.get(&normalized(file))) {
                Some(caption) => (caption.clone(), sidecar.is_file(), false),
                None => {
                    let caption = sidecar.is_file().then(|| read_text(&sidecar)).transpose()?.map(|s| s.trim().to_string());
                    let read = caption.is_some();
                    (caption, false, read)
                }
            })
        })
        .collect::<Result<_, DataError>>()?;
    let sidecars_ignored = captions.iter().filter(|(_, ignored, _)| *ignored).count();
    let from_sidecars = captions.iter().filter(|(_, _, sidecar)| *sidecar).count();
    Ok(FolderCaptions { captions: captions.into_iter().map(|(c, _, _)| c).collect(), metadata: metadata.map(|m| m.file), sidecars_ignored, from_sidecars })
}

/// A caption or metadata file as UTF-8 text without a byte-order mark; other bytes are an error
/// naming the file and where (a caption read as none would train silently without it).
fn read_text(path: &Path) -> Result<String, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    difforge_core::utf8_text(bytes).map_err(|why| DataError::metadata(path, format!("not UTF-8 text ({why}): save it as UTF-8")))
}

/// The metadata file at `root`, if there is one (both kinds at once is an error).
pub fn read_metadata(root: &Path, caption_column: &str) -> Result<Option<Metadata>, DataError> {
    let present: Vec<PathBuf> = METADATA_FILES.iter().map(|name| root.join(name)).filter(|p| p.is_file()).collect();
    let file = match present.as_slice() {
        [] => return Ok(None),
        [one] => one.clone(),
        _ => return Err(DataError::metadata(root, "has both metadata.jsonl and metadata.csv: keep one")),
    };
    let text = read_text(&file)?;
    let text = text.as_str();
    let rows = if file.extension().is_some_and(|e| e == "csv") { csv_rows(text, caption_column) } else { jsonl_rows(text, caption_column) };
    let rows = rows.map_err(|reason| DataError::metadata(&file, reason))?;
    let captions = resolve(root, rows).map_err(|reason| DataError::metadata(&file, reason))?;
    Ok(Some(Metadata { file, captions }))
}

/// One row: its line number (1-based; a CSV record's first line), `file_name` and caption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub line: usize,
    pub file_name: String,
    pub caption: Option<String>,
}

/// The rows as image paths: every `file_name` relative, given once and naming an existing file.
fn resolve(root: &Path, rows: Vec<Row>) -> Result<BTreeMap<PathBuf, Option<String>>, String> {
    let mut captions = BTreeMap::new();
    let mut first_line: HashMap<PathBuf, usize> = HashMap::new();
    let mut missing: Vec<(usize, String)> = Vec::new();
    for row in rows {
        let rel = Path::new(&row.file_name);
        if row.file_name.is_empty() || rel.is_absolute() || rel.components().any(|c| matches!(c, Component::ParentDir | Component::Prefix(_))) {
            return Err(format!("line {}: file_name {:?} is not a path inside the folder (relative, without ..)", row.line, row.file_name));
        }
        let path = normalized(&root.join(rel));
        if let Some(first) = first_line.insert(path.clone(), row.line) {
            return Err(format!("line {}: file_name {:?} is given again (first on line {first})", row.line, row.file_name));
        }
        if !path.is_file() {
            missing.push((row.line, row.file_name));
            continue;
        }
        captions.insert(path, row.caption.map(|c| c.trim().to_string()));
    }
    if !missing.is_empty() {
        let shown: Vec<String> = missing.iter().take(SHOWN_MISSING).map(|(line, name)| format!("line {line} {name:?}")).collect();
        let more = if missing.len() > SHOWN_MISSING { format!(" and {} more", missing.len() - SHOWN_MISSING) } else { String::new() };
        return Err(format!("{} file_name(s) name no file in {}: {}{more}", missing.len(), root.display(), shown.join(", ")));
    }
    Ok(captions)
}

fn quoted_list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<String> = names.into_iter().map(|n| format!("{n:?}")).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// The rows of a JSONL text: one object per line, blank lines skipped. A caption that is null
/// is no caption; numbers and booleans are taken as their text.
pub fn jsonl_rows(text: &str, caption_column: &str) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("line {n}: not valid JSON: {e}"))?;
        let serde_json::Value::Object(object) = value else {
            return Err(format!("line {n}: expected a JSON object with {FILE_NAME_COLUMN:?} and {caption_column:?}"));
        };
        let keys = || quoted_list(object.keys().map(String::as_str));
        let file_name = match object.get(FILE_NAME_COLUMN) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => return Err(format!("line {n}: {FILE_NAME_COLUMN:?} is {other}, expected a string")),
            None => return Err(format!("line {n}: no {FILE_NAME_COLUMN:?} (keys found: {})", keys())),
        };
        let caption = match object.get(caption_column) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Null) => None,
            Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => Some(v.to_string()),
            Some(other) => return Err(format!("line {n}: {caption_column:?} is {other}, expected a string")),
            None => return Err(format!("line {n}: no caption column {caption_column:?} (data.caption_column; keys found: {})", keys())),
        };
        rows.push(Row { line: n, file_name, caption });
    }
    Ok(rows)
}

/// The rows of a CSV text: a header row naming the columns, then one record per row. An empty
/// caption field is an empty caption.
pub fn csv_rows(text: &str, caption_column: &str) -> Result<Vec<Row>, String> {
    let mut records = parse_csv(text)?.into_iter();
    let Some((_, header)) = records.next() else {
        return Err(format!("empty: expected a header row with {FILE_NAME_COLUMN:?} and {caption_column:?}"));
    };
    let columns = || quoted_list(header.iter().map(String::as_str));
    let position = |name: &str| header.iter().position(|h| h.trim() == name);
    let file_col = position(FILE_NAME_COLUMN).ok_or_else(|| format!("line 1: no {FILE_NAME_COLUMN:?} column (columns found: {})", columns()))?;
    let caption_col =
        position(caption_column).ok_or_else(|| format!("line 1: no caption column {caption_column:?} (data.caption_column; columns found: {})", columns()))?;
    let mut rows = Vec::new();
    for (line, fields) in records {
        if fields.len() == 1 && fields[0].is_empty() {
            continue; // a blank line
        }
        if fields.len() != header.len() {
            return Err(format!("line {line}: {} field(s), the header has {}", fields.len(), header.len()));
        }
        rows.push(Row { line, file_name: fields[file_col].clone(), caption: Some(fields[caption_col].clone()) });
    }
    Ok(rows)
}

/// RFC 4180 records with the line each starts on: fields separated by commas, records by LF or
/// CRLF; a field in double quotes may hold commas, line breaks and doubled quotes (`""`).
pub fn parse_csv(text: &str) -> Result<Vec<(usize, Vec<String>)>, String> {
    let mut records = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut line = 1;
    let mut record_line = 1;
    let mut chars = text.chars().peekable();
    // At the start of a field: a quote opens a quoted field.
    let mut at_field_start = true;
    while let Some(c) = chars.next() {
        match c {
            '"' if at_field_start => {
                let opened = line;
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            field.push('"');
                        }
                        Some('"') => break,
                        Some(c) => {
                            line += usize::from(c == '\n');
                            field.push(c);
                        }
                        None => return Err(format!("line {opened}: a quoted field is never closed")),
                    }
                }
                match chars.peek() {
                    None | Some(',' | '\n' | '\r') => {}
                    Some(other) => return Err(format!("line {line}: {other:?} after a closing quote (a quote inside a quoted field is written \"\")")),
                }
                at_field_start = false;
            }
            ',' => {
                fields.push(std::mem::take(&mut field));
                at_field_start = true;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                fields.push(std::mem::take(&mut field));
                records.push((record_line, std::mem::take(&mut fields)));
                line += 1;
                record_line = line;
                at_field_start = true;
            }
            c => {
                field.push(c);
                at_field_start = false;
            }
        }
    }
    if !field.is_empty() || !fields.is_empty() || !at_field_start {
        fields.push(field);
        records.push((record_line, fields));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(text: &str) -> Vec<Vec<String>> {
        parse_csv(text).unwrap().into_iter().map(|(_, f)| f).collect()
    }

    #[test]
    fn csv_quoting_follows_rfc_4180() {
        let text = "file_name,text\r\na.png,\"red, round\"\r\nb.png,\"say \"\"hi\"\"\"\n\"c.png\",\"two\nlines\"\nd.png,\ne.png,\"\"";
        let parsed = parse_csv(text).unwrap();
        let lines: Vec<usize> = parsed.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, vec![1, 2, 3, 4, 6, 7]);
        assert_eq!(
            fields(text),
            vec![
                vec!["file_name", "text"],
                vec!["a.png", "red, round"],
                vec!["b.png", "say \"hi\""],
                vec!["c.png", "two\nlines"],
                vec!["d.png", ""],
                vec!["e.png", ""],
            ]
        );
        assert_eq!(fields("a,b\n"), vec![vec!["a", "b"]]);
        assert_eq!(fields("a,\"\"\n"), vec![vec!["a", ""]]);
    }

    #[test]
    fn captions_from_a_metadata_file_and_sidecars_say_both() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
        for image in [&a, &b] {
            std::fs::write(image, b"png").unwrap();
        }
        std::fs::write(dir.path().join("metadata.jsonl"), "{\"file_name\": \"a.png\", \"text\": \"a cat\"}\n").unwrap();
        std::fs::write(dir.path().join("b.txt"), "a dog\n").unwrap();
        let source = CaptionSource::default();
        let both = folder_captions(dir.path(), &[a.clone(), b], &source).unwrap();
        assert_eq!(both.captions, [Some("a cat".to_string()), Some("a dog".to_string())]);
        assert_eq!(both.source_name(&source), "metadata.jsonl (1 captions) and .txt files (1)");
        assert_eq!(folder_captions(dir.path(), &[a], &source).unwrap().source_name(&source), "metadata.jsonl");
    }

    #[test]
    fn csv_errors_name_the_line() {
        assert_eq!(parse_csv("a,b\nx,\"open\nmore").unwrap_err(), "line 2: a quoted field is never closed");
        assert!(parse_csv("a,b\n\"x\"y,z").unwrap_err().starts_with("line 2: 'y' after a closing quote"));
        let err = csv_rows("file_name,text\na.png,x,extra\n", "text").unwrap_err();
        assert_eq!(err, "line 2: 3 field(s), the header has 2");
        let err = csv_rows("file_name,caption\n", "text").unwrap_err();
        assert_eq!(err, "line 1: no caption column \"text\" (data.caption_column; columns found: \"file_name\", \"caption\")");
    }

    #[test]
    fn jsonl_captions_may_be_null_or_numbers() {
        let rows = jsonl_rows("{\"file_name\": \"a.png\", \"text\": null}\n\n{\"file_name\": \"b.png\", \"text\": 7}\n", "text").unwrap();
        assert_eq!(rows[0], Row { line: 1, file_name: "a.png".into(), caption: None });
        assert_eq!(rows[1], Row { line: 3, file_name: "b.png".into(), caption: Some("7".into()) });
        assert!(jsonl_rows("[1]", "text").unwrap_err().starts_with("line 1: expected a JSON object"));
    }
}
