//! Latents on disk, content-addressed: the key of an image's latents is the SHA-256 of its
//! pixels exactly as the codec receives them (after crop, flip and any augmentation) under a
//! folder named by the VAE's weights, so every augmented variant, every run and every LoRA
//! setting of the same data and VAE share them, and a changed image or VAE can never be
//! served stale latents. Each image is encoded on its own, so its latents do not depend on the
//! batch it first came in (a resumed run reads what the uninterrupted one wrote). Files are
//! written atomically; one that cannot be read back whole is encoded again.

use difforge_core::hash::{sha256_file, sha256_hex};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use tch::{Kind, Tensor};

pub struct LatentCache {
    dir: PathBuf,
    /// Latents read back and latents encoded and stored, reported when the cache is dropped.
    read: AtomicU64,
    stored: AtomicU64,
}

impl Drop for LatentCache {
    /// Says what the cache did for the job that used it (a run's training and validation).
    fn drop(&mut self) {
        let (read, stored) = (self.read.load(Ordering::Relaxed), self.stored.load(Ordering::Relaxed));
        if read + stored > 0 {
            tracing::info!("latent cache {}: {stored} latents encoded and stored, {read} read back", self.dir.display());
        }
    }
}

impl LatentCache {
    /// The cache for the VAE whose weight and config files are `vae_files`, under `root`.
    pub fn open(root: &Path, vae_files: &[PathBuf]) -> std::io::Result<LatentCache> {
        let mut ids = String::new();
        for f in vae_files {
            ids.push_str(&sha256_file(f)?);
        }
        let dir = root.join(format!("vae-{}", &sha256_hex(ids.as_bytes())[..16]));
        std::fs::create_dir_all(&dir)?;
        Ok(LatentCache { dir, read: AtomicU64::new(0), stored: AtomicU64::new(0) })
    }

    /// The latents of each image (N, C, H, W) in `pixels`: read where cached, else encoded one
    /// by one with `encode` and stored. `shape` is one image's latent shape. Hits cost no
    /// tensor operation of their own: the batch crosses into Rust once and back once.
    pub fn latents(&self, pixels: &Tensor, shape: [i64; 3], encode: impl Fn(&Tensor) -> Tensor) -> Tensor {
        let size = pixels.size();
        let n = size[0] as usize;
        let flat = f32s(pixels);
        let per_image = flat.len() / n.max(1);
        let numel = (shape[0] * shape[1] * shape[2]) as usize;
        let mut out = Vec::with_capacity(n * numel);
        for (i, image) in flat.chunks_exact(per_image).enumerate() {
            let path = self.path_of(&size[1..], image);
            match self.read(&path, numel) {
                Some(values) => {
                    self.read.fetch_add(1, Ordering::Relaxed);
                    out.extend_from_slice(&values);
                }
                None => {
                    let latents = f32s(&encode(&pixels.get(i as i64).unsqueeze(0)));
                    self.write(&path, &latents);
                    self.stored.fetch_add(1, Ordering::Relaxed);
                    out.extend_from_slice(&latents);
                }
            }
        }
        Tensor::from_slice(&out).view([n as i64, shape[0], shape[1], shape[2]]).to_device(pixels.device())
    }

    /// The file of an image's latents: its SHA-256 over shape and pixel values.
    fn path_of(&self, image_shape: &[i64], values: &[f32]) -> PathBuf {
        let mut keyed = format!("{image_shape:?}").into_bytes();
        keyed.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        let key = sha256_hex(&keyed);
        self.dir.join(&key[..2]).join(format!("{key}.f32"))
    }

    fn read(&self, path: &Path, numel: usize) -> Option<Vec<f32>> {
        let stored = std::fs::read(path).ok()?;
        if stored.len() != numel * 4 {
            tracing::warn!("latent cache: {} has {} bytes, expected {}; encoding the image again", path.display(), stored.len(), numel * 4);
            return None;
        }
        Some(stored.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }

    fn write(&self, path: &Path, latents: &[f32]) {
        let bytes: Vec<u8> = latents.iter().flat_map(|v| v.to_le_bytes()).collect();
        let written = path.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|_| difforge_core::write_atomic(path, &bytes));
        if let Err(e) = written {
            tracing::warn!("latent cache: cannot write {}: {e} (training goes on without caching it)", path.display());
        }
    }
}

/// A tensor's values as float32, row-major.
fn f32s(t: &Tensor) -> Vec<f32> {
    let t = t.to_device(tch::Device::Cpu).to_kind(Kind::Float).contiguous().view([-1]);
    Vec::<f32>::try_from(&t).expect("a float CPU tensor converts")
}
