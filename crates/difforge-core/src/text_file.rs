//! Reading a small text file a user names (prompt lists, keys) without trusting its size: a
//! stream such as `/dev/zero` or a huge file is refused after a bounded read, not loaded whole.

use std::io::Read;
use std::path::Path;

/// The text of `path`, at most `max_bytes` long; the error says why in words (unreadable, too
/// large, or which byte is not UTF-8), for the caller to put beside the flag or key.
pub fn read_text_capped(path: &Path, max_bytes: u64) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("a readable text file ({e})"))?;
    let mut bytes = Vec::new();
    file.take(max_bytes + 1).read_to_end(&mut bytes).map_err(|e| format!("a readable text file ({e})"))?;
    if bytes.len() as u64 > max_bytes {
        return Err(format!("a text file of at most {} bytes (this one is larger)", max_bytes));
    }
    utf8_text(bytes).map_err(|e| format!("UTF-8 text ({e})"))
}

/// Bytes a user gave as text (a caption, a prompt list, a metadata file), without a
/// byte-order mark; the error says which byte is not UTF-8 ("byte 3 is not valid UTF-8"), for
/// the caller to put beside the file's name.
pub fn utf8_text(bytes: Vec<u8>) -> Result<String, String> {
    let text = String::from_utf8(bytes).map_err(|e| format!("byte {} is not valid UTF-8", e.utf8_error().valid_up_to()))?;
    Ok(text.strip_prefix('\u{feff}').map(str::to_string).unwrap_or(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_cut_at_the_cap_and_bad_bytes_are_located() {
        let err = read_text_capped(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert!(err.contains("at most 1048576 bytes"), "{err}");
        let dir = std::env::temp_dir().join(format!("difforge-text-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("p.txt");
        std::fs::write(&file, b"ok\ncaf\xe9\n").unwrap();
        assert!(read_text_capped(&file, 100).unwrap_err().contains("byte 6 is not valid UTF-8"));
        std::fs::write(&file, "\u{feff}a cat\n").unwrap();
        assert_eq!(read_text_capped(&file, 100).unwrap(), "a cat\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
