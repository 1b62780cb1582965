//! One tar shard read front to back, one sample at a time: a sample is the run of consecutive
//! entries sharing a key (`KEY.png`, `KEY.cls`, `KEY.txt`). The file stays open between calls;
//! each entry is located by its offset, so a fresh `tar::Archive` per entry (it borrows the
//! reader) costs nothing and the stream can pause anywhere.

use crate::error::DataError;
use crate::source::folder::IMAGE_EXTENSIONS;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;
use std::sync::Arc;

/// One sample as stored: the image stays encoded until a batch returns it.
#[derive(Debug, Clone)]
pub struct RawSample {
    pub shard: Arc<Path>,
    pub key: String,
    /// The image entry's extension (a format hint for decoding).
    pub image_ext: String,
    pub image: Vec<u8>,
    pub label: Option<usize>,
    pub caption: Option<String>,
}

/// A regular file entry: its key, extension and (when asked for) its bytes.
struct Entry {
    key: String,
    ext: String,
    data: Option<Vec<u8>>,
}

/// Reads samples from one shard.
pub struct ShardReader {
    path: Arc<Path>,
    reader: BufReader<File>,
    /// Where the reader is, and where the next entry's header starts.
    pos: u64,
    next: u64,
    /// The first entry of the next sample, read while looking for the end of this one.
    pending: Option<Entry>,
    done: bool,
    /// False to count samples from the headers alone, skipping every entry's bytes.
    read_data: bool,
}

const BLOCK: u64 = 512;

impl ShardReader {
    pub fn open(path: &Path, read_data: bool) -> Result<ShardReader, DataError> {
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        Ok(ShardReader { path: path.into(), reader: BufReader::with_capacity(1 << 20, file), pos: 0, next: 0, pending: None, done: false, read_data })
    }

    /// The next sample with an image; samples without one are skipped with a warning.
    pub fn next_sample(&mut self) -> Result<Option<RawSample>, DataError> {
        while let Some(group) = self.next_group()? {
            let key = group[0].key.clone();
            match self.sample_of(key, group)? {
                Some(s) => return Ok(Some(s)),
                None => continue,
            }
        }
        Ok(None)
    }

    /// How many samples with an image the shard holds, from the entry headers alone.
    pub fn count(path: &Path) -> Result<u64, DataError> {
        let mut reader = ShardReader::open(path, false)?;
        let mut n = 0;
        while let Some(group) = reader.next_group()? {
            n += u64::from(group.iter().any(|e| is_image(&e.ext)));
        }
        Ok(n)
    }

    fn sample_of(&self, key: String, group: Vec<Entry>) -> Result<Option<RawSample>, DataError> {
        let mut sample = RawSample { shard: self.path.clone(), key, image_ext: String::new(), image: Vec::new(), label: None, caption: None };
        let mut has_image = false;
        for entry in group {
            let Some(data) = entry.data else { continue };
            match entry.ext.as_str() {
                "cls" => sample.label = Some(self.parse_label(&sample.key, &data)?),
                "txt" => sample.caption = Some(self.parse_caption(&sample.key, data)?),
                ext if is_image(ext) && !has_image => {
                    has_image = true;
                    sample.image_ext = entry.ext;
                    sample.image = data;
                }
                _ => {}
            }
        }
        if !has_image {
            tracing::warn!("{}: sample `{}` has no image entry ({}); skipped", self.path.display(), sample.key, IMAGE_EXTENSIONS.join(", "));
            return Ok(None);
        }
        Ok(Some(sample))
    }

    /// A `.txt` entry as its caption; bytes that are not UTF-8 are an error, as for a folder's
    /// caption files (read as "no caption", they trained silently without it).
    fn parse_caption(&self, key: &str, data: Vec<u8>) -> Result<String, DataError> {
        let text =
            difforge_core::utf8_text(data).map_err(|why| DataError::shard(&*self.path, format!("sample `{key}`: its .txt entry is not UTF-8 text ({why})")))?;
        Ok(text.trim().to_string())
    }

    fn parse_label(&self, key: &str, data: &[u8]) -> Result<usize, DataError> {
        let text = String::from_utf8_lossy(data);
        text.trim().parse().map_err(|_| {
            DataError::shard(&*self.path, format!("sample `{key}`: its .cls entry holds `{}`, expected a class index (0, 1, 2, ...)", text.trim()))
        })
    }

    /// The entries of the next key.
    fn next_group(&mut self) -> Result<Option<Vec<Entry>>, DataError> {
        let first = match self.pending.take() {
            Some(e) => e,
            None => match self.next_entry()? {
                Some(e) => e,
                None => return Ok(None),
            },
        };
        let mut group = vec![first];
        while let Some(entry) = self.next_entry()? {
            if entry.key != group[0].key {
                self.pending = Some(entry);
                break;
            }
            group.push(entry);
        }
        Ok(Some(group))
    }

    /// The next regular file entry; directories and other kinds are passed over.
    fn next_entry(&mut self) -> Result<Option<Entry>, DataError> {
        while !self.done {
            if let Some(entry) = self.read_entry().map_err(|e| DataError::shard(&*self.path, format!("not a readable tar file: {e}")))? {
                return Ok(Some(entry));
            }
        }
        Ok(None)
    }

    /// Reads the entry at `next`: Ok(None) for an entry that is not a regular file (or at the
    /// end, which also sets `done`).
    fn read_entry(&mut self) -> std::io::Result<Option<Entry>> {
        let skip = i64::try_from(self.next - self.pos).map_err(std::io::Error::other)?;
        self.reader.seek_relative(skip)?;
        let start = self.next;
        let mut archive = tar::Archive::new(&mut self.reader);
        let mut entries = archive.entries()?;
        let Some(entry) = entries.next() else {
            self.done = true;
            return Ok(None);
        };
        let mut entry = entry?;
        let (file_pos, size) = (entry.raw_file_position(), entry.size());
        let name = entry.path()?.to_string_lossy().into_owned();
        let (key, ext) = split_name(&name);
        let wanted = entry.header().entry_type().is_file() && self.read_data && is_wanted(&ext);
        let data = if wanted { Some(read_exact_entry(&mut entry, size)?) } else { None };
        self.pos = start + file_pos + if wanted { size } else { 0 };
        self.next = start + file_pos + size.div_ceil(BLOCK) * BLOCK;
        Ok(entry.header().entry_type().is_file().then_some(Entry { key, ext, data }))
    }
}

fn read_exact_entry(entry: &mut impl Read, size: u64) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(1 << 30));
    entry.read_to_end(&mut data)?;
    if data.len() as u64 != size {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("an entry is cut short ({} of {size} bytes)", data.len())));
    }
    Ok(data)
}

/// webdataset's rule: the key is the path up to the first dot of the file name, the extension
/// (lower-cased) the rest.
fn split_name(name: &str) -> (String, String) {
    let base_start = name.rfind('/').map_or(0, |i| i + 1);
    match name[base_start..].find('.') {
        Some(dot) => (name[..base_start + dot].to_string(), name[base_start + dot + 1..].to_ascii_lowercase()),
        None => (name.to_string(), String::new()),
    }
}

fn is_image(ext: &str) -> bool {
    IMAGE_EXTENSIONS.contains(&ext)
}

fn is_wanted(ext: &str) -> bool {
    is_image(ext) || ext == "cls" || ext == "txt"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_end_at_the_first_dot_of_the_file_name() {
        assert_eq!(split_name("a/b.c/x.seg.PNG"), ("a/b.c/x".to_string(), "seg.png".to_string()));
        assert_eq!(split_name("k.jpg"), ("k".to_string(), "jpg".to_string()));
        assert_eq!(split_name("noext"), ("noext".to_string(), String::new()));
    }
}
