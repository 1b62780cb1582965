//! A file mapped read-only into memory, for reading large weight files tensor by tensor without
//! holding them whole in memory.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::Path;

/// The bytes of a file, mapped read-only (a private mapping: nothing is ever written through
/// it). Pages are read from the file when first touched; [`MappedFile::release`] drops the
/// pages of a range from this process again once they have been read.
#[derive(Debug)]
pub struct MappedFile {
    map: memmap2::Mmap,
}

impl MappedFile {
    /// Maps `path`. An empty file is an error (Linux cannot map zero bytes, and no weight file
    /// is empty); the error says so, the caller names the file.
    pub fn open(path: &Path) -> io::Result<MappedFile> {
        let file = File::open(path)?;
        if file.metadata()?.len() == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "the file is empty"));
        }
        // SAFETY: a read-only private mapping of a regular file. The slice `bytes` gives out is
        // only sound while the file is not changed underneath it: if another process truncates
        // the file while it is mapped, touching the lost pages raises SIGBUS (the process dies
        // rather than reading garbage), and if one rewrites it in place the tensors read
        // afterwards may hold the new bytes. Nothing in difforge writes a weight file it is
        // reading; files are written under a temporary name and renamed, which leaves a
        // mapping of the old file intact.
        let map = unsafe { memmap2::MmapOptions::new().map_copy_read_only(&file)? };
        Ok(MappedFile { map })
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The file's length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Always false: an empty file is not mapped.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Drops the pages of `range` (widened to whole pages) from this process's memory, as a hint:
    /// the file's bytes are unchanged and are read again if touched. Reading a large file tensor
    /// by tensor and releasing each range after use keeps the resident size to about one tensor.
    /// A range outside the file is ignored.
    pub fn release(&self, range: Range<usize>) {
        if range.start >= range.end || range.end > self.map.len() {
            return;
        }
        // SAFETY: MADV_DONTNEED on a read-only private file mapping that has never been written
        // (no copy-on-write page exists) only unmaps the pages: the next access faults them in
        // again from the file, so every slice borrowed from `bytes` keeps reading the same bytes.
        // A failure (an unsupported hint) changes nothing and is ignored.
        let _ = unsafe { self.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, range.start, range.end - range.start) };
    }
}
