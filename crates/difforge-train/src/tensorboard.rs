//! TensorBoard event files, so that `tensorboard --logdir runs/` shows a run as it shows a
//! diffusers or kohya run: scalars (loss, learning rate, gradient norm, throughput, validation
//! per band, evaluation metrics) and the sample grids as images.
//!
//! The format is TFRecord framing (length, masked CRC-32C of the length, payload, masked CRC-32C
//! of the payload) around `tensorflow.Event` protocol buffers. The few messages needed are
//! encoded here by hand; [`read_events`] decodes them back (tests use it, and so can tools).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// CRC-32C (Castagnoli), bitwise with a table built once.
fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0x82F6_3B78 ^ (c >> 1) } else { c >> 1 };
            }
            *slot = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| table[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8))
}

/// TFRecord's masked CRC: rotated and offset so that CRCs of CRCs stay well distributed.
fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xA282_EAD8)
}

/// Protocol-buffer encoding of the fields we write.
#[derive(Default)]
struct Message(Vec<u8>);

impl Message {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire));
    }

    fn uint(&mut self, field: u32, v: u64) -> &mut Self {
        self.key(field, 0);
        self.varint(v);
        self
    }

    fn double(&mut self, field: u32, v: f64) -> &mut Self {
        self.key(field, 1);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn float(&mut self, field: u32, v: f32) -> &mut Self {
        self.key(field, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn bytes(&mut self, field: u32, v: &[u8]) -> &mut Self {
        self.key(field, 2);
        self.varint(v.len() as u64);
        self.0.extend_from_slice(v);
        self
    }
}

// Field numbers of tensorflow/core/util/event.proto and framework/summary.proto.
const EVENT_WALL_TIME: u32 = 1;
const EVENT_STEP: u32 = 2;
const EVENT_FILE_VERSION: u32 = 3;
const EVENT_SUMMARY: u32 = 5;
const EVENT_SESSION_LOG: u32 = 7;
const SUMMARY_VALUE: u32 = 1;
const VALUE_TAG: u32 = 1;
const VALUE_SIMPLE: u32 = 2;
const VALUE_IMAGE: u32 = 4;
const IMAGE_HEIGHT: u32 = 1;
const IMAGE_WIDTH: u32 = 2;
const IMAGE_COLORSPACE: u32 = 3;
const IMAGE_ENCODED: u32 = 4;
const SESSION_STATUS: u32 = 1;
const SESSION_START: u64 = 1;

/// Appends events to one event file of a run folder.
pub struct EventWriter {
    file: File,
    path: PathBuf,
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl EventWriter {
    /// A new event file in `dir`. A run that resumes at `start_step` > 0 also logs a session
    /// start there, so TensorBoard drops what the interrupted run logged after it.
    pub fn create(dir: &Path, start_step: u64) -> std::io::Result<EventWriter> {
        static OPENED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let seq = OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("events.out.tfevents.{stamp:010}.difforge.{}.{seq}", std::process::id()));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let mut w = EventWriter { file, path };
        let mut version = Message::default();
        version.double(EVENT_WALL_TIME, now()).uint(EVENT_STEP, start_step).bytes(EVENT_FILE_VERSION, b"brain.Event:2");
        w.record(&version.0)?;
        if start_step > 0 {
            let mut session = Message::default();
            session.uint(SESSION_STATUS, SESSION_START);
            let mut event = Message::default();
            event.double(EVENT_WALL_TIME, now()).uint(EVENT_STEP, start_step).bytes(EVENT_SESSION_LOG, &session.0);
            w.record(&event.0)?;
        }
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn record(&mut self, payload: &[u8]) -> std::io::Result<()> {
        let len = (payload.len() as u64).to_le_bytes();
        let mut rec = Vec::with_capacity(payload.len() + 16);
        rec.extend_from_slice(&len);
        rec.extend_from_slice(&masked_crc(&len).to_le_bytes());
        rec.extend_from_slice(payload);
        rec.extend_from_slice(&masked_crc(payload).to_le_bytes());
        self.file.write_all(&rec)?;
        self.file.flush()
    }

    fn summary(&mut self, step: u64, values: &[Message]) -> std::io::Result<()> {
        let mut summary = Message::default();
        for v in values {
            summary.bytes(SUMMARY_VALUE, &v.0);
        }
        let mut event = Message::default();
        event.double(EVENT_WALL_TIME, now()).uint(EVENT_STEP, step).bytes(EVENT_SUMMARY, &summary.0);
        self.record(&event.0)
    }

    /// Scalars (tag, value) at `step`, in one event.
    pub fn scalars(&mut self, step: u64, scalars: &[(&str, f64)]) -> std::io::Result<()> {
        let values: Vec<Message> = scalars
            .iter()
            .map(|(tag, v)| {
                let mut m = Message::default();
                m.bytes(VALUE_TAG, tag.as_bytes()).float(VALUE_SIMPLE, *v as f32);
                m
            })
            .collect();
        self.summary(step, &values)
    }

    /// A PNG image at `step` (its size and colour type read from its header).
    pub fn png(&mut self, step: u64, tag: &str, png: &[u8]) -> std::io::Result<()> {
        let (width, height, channels) = png_header(png).ok_or_else(|| std::io::Error::other("not a PNG image"))?;
        let mut image = Message::default();
        image.uint(IMAGE_HEIGHT, u64::from(height)).uint(IMAGE_WIDTH, u64::from(width)).uint(IMAGE_COLORSPACE, channels).bytes(IMAGE_ENCODED, png);
        let mut value = Message::default();
        value.bytes(VALUE_TAG, tag.as_bytes()).bytes(VALUE_IMAGE, &image.0);
        self.summary(step, &[value])
    }
}

/// Width, height and channel count of a PNG from its IHDR chunk.
fn png_header(png: &[u8]) -> Option<(u32, u32, u64)> {
    if png.len() < 26 || &png[..8] != b"\x89PNG\r\n\x1a\n" || &png[12..16] != b"IHDR" {
        return None;
    }
    let be = |i: usize| u32::from_be_bytes([png[i], png[i + 1], png[i + 2], png[i + 3]]);
    let channels = match png[25] {
        0 => 1,
        2 => 3,
        4 => 2,
        6 => 4,
        _ => 3,
    };
    Some((be(16), be(20), channels))
}

/// One event read back.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadEvent {
    pub step: u64,
    /// (tag, value) of the scalars.
    pub scalars: Vec<(String, f32)>,
    /// (tag, width, height) of the images.
    pub images: Vec<(String, u64, u64)>,
    pub file_version: Option<String>,
    pub session_start: bool,
}

/// A field of a protocol buffer: (number, varint or fixed value, or bytes).
enum Field<'a> {
    Int(u32, u64),
    Bytes(u32, &'a [u8]),
}

fn fields(mut b: &[u8]) -> Result<Vec<Field<'_>>, String> {
    fn varint(b: &mut &[u8]) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first().ok_or("truncated varint")?;
            *b = rest;
            v |= u64::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let (field, wire) = ((key >> 3) as u32, key & 7);
        let take = |b: &mut &[u8], n: usize| -> Result<u64, String> {
            let bytes = b.get(..n).ok_or("truncated fixed field")?;
            let mut buf = [0u8; 8];
            buf[..n].copy_from_slice(bytes);
            *b = &b[n..];
            Ok(u64::from_le_bytes(buf))
        };
        match wire {
            0 => out.push(Field::Int(field, varint(&mut b)?)),
            1 => out.push(Field::Int(field, take(&mut b, 8)?)),
            5 => out.push(Field::Int(field, take(&mut b, 4)?)),
            2 => {
                let n = varint(&mut b)? as usize;
                let v = b.get(..n).ok_or("truncated bytes field")?;
                b = &b[n..];
                out.push(Field::Bytes(field, v));
            }
            w => return Err(format!("wire type {w} is not used in event files")),
        }
    }
    Ok(out)
}

fn read_value(b: &[u8], ev: &mut ReadEvent) -> Result<(), String> {
    let (mut tag, mut simple, mut image) = (String::new(), None, None);
    for f in fields(b)? {
        match f {
            Field::Bytes(VALUE_TAG, t) => tag = String::from_utf8_lossy(t).into_owned(),
            Field::Int(VALUE_SIMPLE, v) => simple = Some(f32::from_bits(v as u32)),
            Field::Bytes(VALUE_IMAGE, img) => {
                let (mut w, mut h) = (0, 0);
                for g in fields(img)? {
                    match g {
                        Field::Int(IMAGE_WIDTH, v) => w = v,
                        Field::Int(IMAGE_HEIGHT, v) => h = v,
                        _ => {}
                    }
                }
                image = Some((w, h));
            }
            _ => {}
        }
    }
    if let Some(v) = simple {
        ev.scalars.push((tag.clone(), v));
    }
    if let Some((w, h)) = image {
        ev.images.push((tag, w, h));
    }
    Ok(())
}

/// Every event of an event file, after checking both CRCs of every record.
pub fn read_events(path: &Path) -> Result<Vec<ReadEvent>, String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut rest = &data[..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let head = rest.get(..12).ok_or("truncated record header")?;
        let len_bytes = &head[..8];
        if masked_crc(len_bytes).to_le_bytes() != head[8..12] {
            return Err("a record's length CRC does not match".into());
        }
        let len = u64::from_le_bytes(len_bytes.try_into().map_err(|_| "bad length")?) as usize;
        let payload = rest.get(12..12 + len).ok_or("truncated record")?;
        let crc = rest.get(12 + len..16 + len).ok_or("truncated record CRC")?;
        if masked_crc(payload).to_le_bytes() != crc {
            return Err("a record's payload CRC does not match".into());
        }
        rest = &rest[16 + len..];
        let mut ev = ReadEvent { step: 0, scalars: Vec::new(), images: Vec::new(), file_version: None, session_start: false };
        for f in fields(payload)? {
            match f {
                Field::Int(EVENT_STEP, s) => ev.step = s,
                Field::Bytes(EVENT_FILE_VERSION, v) => ev.file_version = Some(String::from_utf8_lossy(v).into_owned()),
                Field::Bytes(EVENT_SESSION_LOG, s) => ev.session_start = fields(s)?.iter().any(|g| matches!(g, Field::Int(SESSION_STATUS, SESSION_START))),
                Field::Bytes(EVENT_SUMMARY, s) => {
                    for g in fields(s)? {
                        if let Field::Bytes(SUMMARY_VALUE, v) = g {
                            read_value(v, &mut ev)?;
                        }
                    }
                }
                _ => {}
            }
        }
        out.push(ev);
    }
    Ok(out)
}

/// The event files of a run folder, oldest first.
pub fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("events.out.tfevents.")))
        .collect();
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn events_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path(), 0).unwrap();
        w.scalars(10, &[("train/loss", 0.25), ("train/lr", 1e-3)]).unwrap();
        let png = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n', 0, 0, 0, 13, b'I', b'H', b'D', b'R', 0, 0, 0, 7, 0, 0, 0, 5, 8, 0, 0, 0, 0];
        w.png(20, "samples", &png).unwrap();
        let events = read_events(w.path()).unwrap();
        assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
        assert_eq!(events[1].step, 10);
        assert_eq!(events[1].scalars, vec![("train/loss".to_string(), 0.25), ("train/lr".to_string(), 1e-3)]);
        assert_eq!(events[2].images, vec![("samples".to_string(), 7, 5)]);
        // A resumed run starts a new file with a session start at its step.
        let w2 = EventWriter::create(dir.path(), 40).unwrap();
        let resumed = read_events(w2.path()).unwrap();
        assert!(resumed[1].session_start && resumed[1].step == 40);
        // A flipped byte is caught by the CRC.
        let mut bytes = std::fs::read(w.path()).unwrap();
        let n = bytes.len();
        bytes[n - 6] ^= 1;
        std::fs::write(w.path(), &bytes).unwrap();
        assert!(read_events(w.path()).is_err());
    }
}
