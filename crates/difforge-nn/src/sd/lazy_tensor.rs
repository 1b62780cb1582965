//! Tensors of a safetensors file, read only when they are used: the file is mapped and only its
//! header parsed; each tensor's bytes are copied into a tensor of its own when
//! [`LazyTensor::materialise`] asks for it, and the mapped pages are given back right after. A
//! network's weights load with about the network's own memory plus one tensor, not twice the
//! file.

use crate::error::NnError;
use difforge_native::MappedFile;
use safetensors::{Dtype, SafeTensors};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Kind, Tensor};

/// A tensor known by its shape, whose data is read when it is materialised.
pub struct LazyTensor(Repr);

/// A tensor computed from another when it is materialised.
type Derive = Arc<dyn Fn(Tensor) -> Tensor + Send + Sync>;

enum Repr {
    /// Already in memory (a torch.save file's tensors, or one made by the caller).
    Ready(Tensor),
    /// The bytes `range` of a mapped safetensors file.
    Mapped { file: Arc<Mapped>, name: String, kind: Kind, shape: Vec<i64>, range: Range<usize> },
    /// `derive` of another lazy tensor, declared to give `shape`.
    Derived { source: Box<LazyTensor>, shape: Vec<i64>, derive: Derive },
}

/// A mapped file and its name, for errors.
struct Mapped {
    path: PathBuf,
    map: MappedFile,
}

impl Clone for LazyTensor {
    /// A second handle on the same data (a mapped view, or the same tensor storage).
    fn clone(&self) -> Self {
        LazyTensor(match &self.0 {
            Repr::Ready(t) => Repr::Ready(t.shallow_clone()),
            Repr::Mapped { file, name, kind, shape, range } => {
                Repr::Mapped { file: file.clone(), name: name.clone(), kind: *kind, shape: shape.clone(), range: range.clone() }
            }
            Repr::Derived { source, shape, derive } => Repr::Derived { source: source.clone(), shape: shape.clone(), derive: derive.clone() },
        })
    }
}

impl fmt::Debug for LazyTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Ready(t) => write!(f, "LazyTensor::Ready({:?}, {:?})", t.kind(), t.size()),
            Repr::Mapped { file, name, kind, shape, range } => {
                write!(f, "LazyTensor::Mapped({} `{name}` {kind:?} {shape:?} at {range:?})", file.path.display())
            }
            Repr::Derived { source, shape, .. } => write!(f, "LazyTensor::Derived({shape:?} from {source:?})"),
        }
    }
}

impl From<Tensor> for LazyTensor {
    fn from(t: Tensor) -> Self {
        LazyTensor(Repr::Ready(t))
    }
}

impl LazyTensor {
    /// Every tensor of the safetensors file `path`, unread: the file is mapped and its header
    /// checked (each tensor's dtype, shape and byte range; the ranges inside the file), so that
    /// a truncated or corrupt file fails here, naming the file and the tensor, not on use.
    pub fn read_safetensors(path: &Path) -> Result<Vec<(String, LazyTensor)>, NnError> {
        let err = |reason: String| NnError::Load { path: path.to_path_buf(), reason };
        let map = MappedFile::open(path).map_err(|e| err(e.to_string()))?;
        let entries = header(map.bytes()).map_err(err)?;
        let file = Arc::new(Mapped { path: path.to_path_buf(), map });
        Ok(entries
            .into_iter()
            .map(|e| {
                let repr = Repr::Mapped { file: file.clone(), name: e.name.clone(), kind: e.kind, shape: e.shape, range: e.range };
                (e.name, LazyTensor(repr))
            })
            .collect())
    }

    /// The tensor's shape, without reading its data.
    pub fn size(&self) -> Vec<i64> {
        match &self.0 {
            Repr::Ready(t) => t.size(),
            Repr::Mapped { shape, .. } | Repr::Derived { shape, .. } => shape.clone(),
        }
    }

    /// Where the data lies (the file and the offset in it), for reading a file in order; `None`
    /// for a tensor given ready.
    pub fn file_order(&self) -> Option<(&Path, usize)> {
        match &self.0 {
            Repr::Ready(_) => None,
            Repr::Mapped { file, range, .. } => Some((&file.path, range.start)),
            Repr::Derived { source, .. } => source.file_order(),
        }
    }

    /// A lazy tensor of `shape` that is `derive` of this one once materialised (a reshape, a
    /// transpose, a slice: whatever a caller must compute on the file's tensor).
    pub fn derived(&self, shape: Vec<i64>, derive: impl Fn(Tensor) -> Tensor + Send + Sync + 'static) -> LazyTensor {
        LazyTensor(Repr::Derived { source: Box::new(self.clone()), shape, derive: Arc::new(derive) })
    }

    /// The tensor in memory, on the CPU in the file's dtype (a tensor given ready: that one).
    /// A mapped tensor's bytes are copied into a new tensor and their pages released; each call
    /// reads them again.
    pub fn materialise(&self) -> Result<Tensor, NnError> {
        match &self.0 {
            Repr::Ready(t) => Ok(t.shallow_clone()),
            Repr::Mapped { file, name, kind, shape, range } => {
                let bytes = file.map.bytes().get(range.clone()).ok_or_else(|| NnError::Load {
                    path: file.path.clone(),
                    reason: format!("tensor `{name}` lies outside the file (bytes {range:?} of {})", file.map.len()),
                })?;
                let t = Tensor::f_from_data_size(bytes, shape, *kind)
                    .map_err(|e| NnError::Load { path: file.path.clone(), reason: format!("tensor `{name}`: {e}") })?;
                file.map.release(range.clone());
                Ok(t)
            }
            Repr::Derived { source, shape, derive } => {
                let t = derive(source.materialise()?);
                if &t.size() != shape {
                    return Err(NnError::Invalid(format!("a tensor derived from {source:?} has shape {:?}, not the {shape:?} declared", t.size())));
                }
                Ok(t)
            }
        }
    }
}

/// One tensor of a safetensors header, checked.
struct Entry {
    name: String,
    kind: Kind,
    shape: Vec<i64>,
    /// Its bytes in the whole file (header included).
    range: Range<usize>,
}

#[derive(serde::Deserialize)]
struct RawEntry {
    dtype: Dtype,
    shape: Vec<usize>,
    data_offsets: (usize, usize),
}

/// The length prefix of a safetensors file.
const LEN_BYTES: usize = 8;

/// The tch kind of a safetensors dtype, for the dtypes tch's own reader takes.
fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::BOOL => Kind::Bool,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::I16 => Kind::Int16,
        Dtype::I32 => Kind::Int,
        Dtype::I64 => Kind::Int64,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        _ => return None,
    })
}

/// The tensors of the safetensors file `bytes`, each checked against the file: its dtype one tch
/// reads, its byte count dtype × shape, its bytes inside the file. The safetensors crate's own
/// checks then apply as well (ranges in order, without gaps, covering the file to its end), as
/// tch's eager reader applies them.
fn header(bytes: &[u8]) -> Result<Vec<Entry>, String> {
    let len = bytes.len();
    let Some(prefix) = bytes.get(..LEN_BYTES) else {
        return Err(format!("not a safetensors file: {len} bytes, fewer than its 8-byte header length (truncated?)"));
    };
    let mut n = [0u8; LEN_BYTES];
    n.copy_from_slice(prefix);
    let n = u64::from_le_bytes(n);
    let data_start = usize::try_from(n)
        .ok()
        .and_then(|n| n.checked_add(LEN_BYTES))
        .filter(|&end| end <= len)
        .ok_or_else(|| format!("not a safetensors file: its header length says {n} bytes, but only {} follow (truncated?)", len - LEN_BYTES))?;
    let raw: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[LEN_BYTES..data_start]).map_err(|e| format!("not a safetensors file: its header is not a JSON object: {e}"))?;
    let data_len = len - data_start;
    let mut entries = Vec::with_capacity(raw.len());
    for (name, value) in raw {
        if name == "__metadata__" {
            continue;
        }
        let e: RawEntry = serde_json::from_value(value).map_err(|e| format!("tensor `{name}`: not a valid header entry: {e}"))?;
        let kind = kind_of(e.dtype).ok_or_else(|| format!("tensor `{name}` has dtype {}, which difforge does not read", e.dtype))?;
        let (start, end) = e.data_offsets;
        let need = e.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).and_then(|n| n.checked_mul(e.dtype.bitsize())).map(|bits| bits.div_ceil(8));
        let Some(need) = need.filter(|_| end >= start) else {
            return Err(format!("tensor `{name}` has an impossible size: dtype {}, shape {:?}, data_offsets [{start}, {end}]", e.dtype, e.shape));
        };
        if end - start != need {
            return Err(format!(
                "tensor `{name}` ({}, shape {:?}) needs {need} bytes, but its data_offsets [{start}, {end}] give it {}",
                e.dtype,
                e.shape,
                end - start
            ));
        }
        if end > data_len {
            return Err(format!(
                "tensor `{name}` lies past the end of the file: its data_offsets [{start}, {end}] reach beyond the {data_len} data bytes the file has (truncated?)"
            ));
        }
        let shape = e
            .shape
            .iter()
            .map(|&d| i64::try_from(d))
            .collect::<Result<Vec<i64>, _>>()
            .map_err(|_| format!("tensor `{name}` has a dimension too large: {:?}", e.shape))?;
        entries.push(Entry { name, kind, shape, range: data_start + start..data_start + end });
    }
    SafeTensors::read_metadata(bytes).map_err(|e| format!("not a valid safetensors file: {e}"))?;
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tch::Device;

    /// The tensor's bytes, to compare bit for bit.
    fn bits(t: &Tensor) -> (Kind, Vec<i64>, Vec<u8>) {
        let raw = t.contiguous().reshape([-1]).view_dtype(Kind::Uint8);
        (t.kind(), t.size(), Vec::<u8>::try_from(&raw).unwrap())
    }

    fn sample_tensors() -> Vec<(String, Tensor)> {
        tch::manual_seed(7);
        let f = Tensor::randn([3, 5], (Kind::Float, Device::Cpu));
        vec![
            ("f32".to_string(), f.shallow_clone()),
            ("f16".to_string(), f.to_kind(Kind::Half).reshape([5, 3])),
            ("bf16".to_string(), (f * 1000.0).to_kind(Kind::BFloat16)),
            ("f64".to_string(), Tensor::randn([2, 2, 2], (Kind::Double, Device::Cpu))),
            ("i64".to_string(), Tensor::arange(7, (Kind::Int64, Device::Cpu)) - 3),
            ("u8".to_string(), Tensor::arange(9, (Kind::Uint8, Device::Cpu)).reshape([3, 3])),
            ("scalar".to_string(), Tensor::from(2.5f32)),
            ("empty".to_string(), Tensor::zeros([0, 4], (Kind::Float, Device::Cpu))),
        ]
    }

    fn written(dir: &Path) -> PathBuf {
        let path = dir.join("w.safetensors");
        Tensor::write_safetensors(&sample_tensors(), &path).unwrap();
        path
    }

    fn load_err(path: &Path) -> String {
        LazyTensor::read_safetensors(path).expect_err("a broken file fails").to_string()
    }

    #[test]
    fn lazy_tensors_equal_the_eager_reader_bit_for_bit() {
        let dir = tempfile::tempdir().unwrap();
        let path = written(dir.path());
        let eager: HashMap<String, Tensor> = Tensor::read_safetensors(&path).unwrap().into_iter().collect();
        let lazy = LazyTensor::read_safetensors(&path).unwrap();
        assert_eq!(lazy.len(), sample_tensors().len());
        for (name, t) in &lazy {
            assert_eq!(t.size(), eager[name].size(), "{name}");
            assert_eq!(bits(&t.materialise().unwrap()), bits(&eager[name]), "{name}");
            // A second read (after the pages were released) gives the same bytes.
            assert_eq!(bits(&t.materialise().unwrap()), bits(&eager[name]), "{name} again");
        }
        let f32 = &lazy.iter().find(|(n, _)| n == "f32").unwrap().1;
        let tr = f32.derived(vec![5, 3], |t| t.tr().contiguous());
        assert_eq!(tr.size(), vec![5, 3]);
        assert_eq!(bits(&tr.materialise().unwrap()), bits(&eager["f32"].tr().contiguous()));
        let wrong = f32.derived(vec![3, 5], |t| t.tr());
        assert!(wrong.materialise().unwrap_err().to_string().contains("not the [3, 5] declared"));
    }

    #[test]
    fn a_truncated_file_fails_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = written(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        let cut = dir.path().join("cut.safetensors");
        for keep in [bytes.len() - 1, bytes.len() - 40, 100, 5] {
            std::fs::write(&cut, &bytes[..keep]).unwrap();
            let e = load_err(&cut);
            assert!(e.contains(&cut.display().to_string()) && e.contains("truncated?"), "{keep} bytes: {e}");
        }
        // Within the data: the error names the tensor that no longer fits.
        std::fs::write(&cut, &bytes[..bytes.len() - 1]).unwrap();
        assert!(load_err(&cut).contains("lies past the end of the file"));
        std::fs::write(&cut, b"").unwrap();
        let e = load_err(&cut);
        assert!(e.contains(&cut.display().to_string()) && e.contains("empty"), "{e}");
        let e = load_err(&dir.path().join("absent.safetensors"));
        assert!(e.contains("absent.safetensors"), "{e}");
    }

    /// A file with `header` (JSON) and `data` bytes.
    fn handmade(dir: &Path, header: &str, data: &[u8]) -> PathBuf {
        let path = dir.join("handmade.safetensors");
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn a_header_that_lies_about_byte_ranges_fails_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let data = [0u8; 16];
        let good = handmade(dir.path(), r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#, &data);
        assert_eq!(LazyTensor::read_safetensors(&good).unwrap()[0].1.materialise().unwrap().size(), vec![2, 2]);
        let cases = [
            // Beyond the file.
            (r#"{"a":{"dtype":"F32","shape":[1000],"data_offsets":[0,4000]}}"#, "tensor `a` lies past the end of the file"),
            // Fewer bytes than dtype x shape.
            (r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,8]}}"#, "tensor `a` (F32, shape [2, 2]) needs 16 bytes"),
            (r#"{"a":{"dtype":"F16","shape":[2,2],"data_offsets":[0,16]}}"#, "needs 8 bytes, but its data_offsets [0, 16] give it 16"),
            // An end before the start, a size that overflows.
            (r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[16,0]}}"#, "tensor `a` has an impossible size"),
            (r#"{"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,16]}}"#, "tensor `a` has an impossible size"),
            // Two tensors on the same bytes: the safetensors crate's own check.
            (r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, "not a valid safetensors file"),
            (r#"{"a":{"dtype":"F32","shape":[2,2]}}"#, "tensor `a`: not a valid header entry"),
            (r#"{"a":{"dtype":"F8_E8M0","shape":[16],"data_offsets":[0,16]}}"#, "dtype F8_E8M0, which difforge does not read"),
            (r#"["a"]"#, "its header is not a JSON object"),
        ];
        for (header, want) in cases {
            let path = handmade(dir.path(), header, &data);
            let e = load_err(&path);
            assert!(e.contains(&path.display().to_string()) && e.contains(want), "{header}: {e}");
        }
        // A header length beyond the file.
        let mut bytes = 1_000_000u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        let path = dir.path().join("long.safetensors");
        std::fs::write(&path, bytes).unwrap();
        assert!(load_err(&path).contains("its header length says 1000000 bytes, but only 2 follow"));
    }
}
