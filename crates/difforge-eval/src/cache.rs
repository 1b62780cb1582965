//! Features of real images, cached on disk by content: the key hashes the feature network's
//! weights and the exact preprocessed pixels, so a second evaluation against the same data skips
//! the network, and any change to the data, its preprocessing or the weights misses the cache.

use crate::features::{FeatureNet, FeatureNetInfo};
use crate::EvalError;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

pub struct FeatureCache {
    dir: PathBuf,
}

impl FeatureCache {
    pub fn new(dir: PathBuf) -> FeatureCache {
        FeatureCache { dir }
    }

    /// `$DIFFORGE_CACHE_DIR/features`, else ~/.cache/difforge/features.
    pub fn default_dir() -> PathBuf {
        match std::env::var_os("DIFFORGE_CACHE_DIR") {
            Some(dir) => PathBuf::from(dir).join("features"),
            None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/difforge/features"),
        }
    }

    /// The content key of `images` under `net`.
    pub fn key(info: &FeatureNetInfo, images: &Tensor) -> Result<String, EvalError> {
        let pixels = images.to_kind(Kind::Float).to_device(tch::Device::Cpu).contiguous();
        let values = Vec::<f32>::try_from(pixels.view([-1])).map_err(|e| EvalError::Input(format!("reading images for the feature cache key: {e}")))?;
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let shape = format!("{:?}", images.size());
        Ok(difforge_core::sha256_hex(format!("{}\0{}\0{shape}\0{}", info.name, info.weights_sha256, difforge_core::sha256_hex(&raw)).as_bytes()))
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.safetensors"))
    }

    /// Cached features of `images`, or computes and stores them. Returns (features, was cached).
    /// An unreadable cache entry is recomputed and overwritten, never trusted.
    pub fn features(&self, net: &FeatureNet, images: &Tensor, batch: usize, progress: impl FnMut(usize)) -> Result<(Tensor, bool), EvalError> {
        let key = Self::key(&net.info, images)?;
        let path = self.path(&key);
        if let Some(features) = read(&path, images.size()[0], net.info.dim) {
            return Ok((features, true));
        }
        let features = net.extract(images, batch, progress)?;
        write(&path, &features)?;
        Ok((features, false))
    }
}

fn read(path: &Path, rows: i64, dim: i64) -> Option<Tensor> {
    let tensors = Tensor::read_safetensors(path).ok()?;
    let (_, t) = tensors.into_iter().find(|(name, _)| name == "features")?;
    (t.size() == [rows, dim] && t.kind() == Kind::Float).then_some(t)
}

fn write(path: &Path, features: &Tensor) -> Result<(), EvalError> {
    let err = |e: String| EvalError::Write { path: path.to_path_buf(), reason: e };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), path.file_name().and_then(|n| n.to_str()).unwrap_or("features")));
    Tensor::write_safetensors(&[("features", features)], &tmp).map_err(|e| err(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
}
