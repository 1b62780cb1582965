//! serve.toml: the server's settings. Every key has a default; unknown keys are rejected.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Address to listen on; port 0 picks a free port (printed at start).
    pub bind: String,
    /// Merge concurrent compatible requests into one model batch.
    pub batching: bool,
    /// Images per model call. Every call runs at exactly this size (padded), so an image does
    /// not depend on what it was batched with: the same request and seed give the same bytes.
    pub max_batch: usize,
    /// How long the first request of a batch waits for others, in milliseconds.
    pub max_wait_ms: u64,
    /// Requests waiting at most; more are refused with 429.
    pub queue_capacity: usize,
    /// A request not answered within this many milliseconds gets 504.
    pub request_timeout_ms: u64,
    /// Largest request body in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Largest `n` (images per request).
    pub max_images: usize,
    /// Largest `steps`.
    pub max_steps: usize,
    /// Largest `guidance`.
    pub max_guidance: f64,
    /// Generated images over which output statistics (drift) are averaged.
    pub drift_window: usize,
    /// Recompute FD-EffNet of the last drift_window outputs against the validation images every
    /// N generated images (metric difforge_output_fd_effnet); 0 turns it off. It runs beside the
    /// worker and takes CPU from it, so it is off by default.
    pub feature_drift_every: usize,
    /// "auto", "cpu", "cuda" or "cuda:N".
    pub device: String,
    /// CPU threads for libtorch; 0 means one per core.
    pub threads: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            bind: "127.0.0.1:8080".into(),
            batching: true,
            max_batch: 8,
            max_wait_ms: 10,
            queue_capacity: 64,
            request_timeout_ms: 60_000,
            max_body_bytes: 16 * 1024,
            max_images: 16,
            max_steps: 250,
            max_guidance: 20.0,
            drift_window: 1000,
            feature_drift_every: 0,
            device: "auto".into(),
            threads: 0,
        }
    }
}

impl ServeConfig {
    pub fn load(path: Option<&std::path::Path>) -> Result<ServeConfig, String> {
        let Some(path) = path else { return Ok(ServeConfig::default()) };
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let value: toml::Value = text.parse::<toml::Table>().map(toml::Value::Table).map_err(|e| format!("{}: {e}", path.display()))?;
        let cfg: ServeConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            format!("{}: key `{key}`: {}", path.display(), e.into_inner().message().trim())
        })?;
        cfg.validate().map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), String> {
        for (key, v) in [
            ("max_batch", self.max_batch),
            ("queue_capacity", self.queue_capacity),
            ("max_images", self.max_images),
            ("max_steps", self.max_steps),
            ("max_body_bytes", self.max_body_bytes),
            ("drift_window", self.drift_window),
        ] {
            if v == 0 {
                return Err(format!("{key} = 0: expected at least 1"));
            }
        }
        if self.max_batch > 1024 || self.max_images > 1024 {
            return Err("max_batch and max_images: expected at most 1024".into());
        }
        if self.request_timeout_ms == 0 {
            return Err("request_timeout_ms = 0: expected at least 1".into());
        }
        Ok(())
    }
}
