//! serve.toml: the server's settings. Every key has a default; unknown keys are rejected.

use difforge_core::{check_range, ConfigError};
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
    /// Largest `width` or `height` of a requested image, in pixels (models that generate other
    /// sizes than their own: Stable Diffusion).
    pub max_side: i64,
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
    /// Connections open at once at most; at the limit a new connection closes the oldest one
    /// that has sent nothing (so /healthz stays reachable under a flood of idle connections).
    /// Lowered to what the open-file limit allows.
    pub max_connections: usize,
    /// Request headers must arrive within this many milliseconds of a connection opening (or of
    /// the previous response on a kept-alive connection), or the connection is closed.
    pub header_timeout_ms: u64,
    /// A request's body must arrive within this many milliseconds of its headers (408, and the
    /// connection's slot is free again): a client that declares a body and stalls holds nothing.
    pub body_timeout_ms: u64,
    /// On SIGTERM/SIGINT the server stops accepting and exits within this many milliseconds:
    /// queued and running work goes on until shortly before (then it is cancelled at its next
    /// denoising step and answered 503), and connections still open at the end are dropped.
    pub shutdown_timeout_ms: u64,
    /// Folders /admin/reload may load checkpoints from (default: the folder that holds the served
    /// checkpoint or run folder).
    pub reload_roots: Vec<std::path::PathBuf>,
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
            max_side: 2048,
            drift_window: 1000,
            feature_drift_every: 0,
            device: "auto".into(),
            threads: 0,
            max_connections: 4096,
            header_timeout_ms: 10_000,
            body_timeout_ms: 10_000,
            shutdown_timeout_ms: 10_000,
            reload_roots: Vec::new(),
        }
    }
}

impl ServeConfig {
    /// Reads serve.toml (the defaults without one); errors name the file, the key, the value and
    /// what was expected.
    pub fn load(path: Option<&std::path::Path>) -> Result<ServeConfig, ConfigError> {
        let Some(path) = path else { return Ok(ServeConfig::default()) };
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::new("--config", &origin, format!("a readable serve.toml ({e})")))?;
        let value: toml::Value =
            text.parse::<toml::Table>().map(toml::Value::Table).map_err(|e| ConfigError::problem("", e.message().trim().to_string()).with_origin(&origin))?;
        let cfg: ServeConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::problem(if key == "." { String::new() } else { key }, e.into_inner().message().trim().to_string()).with_origin(&origin)
        })?;
        cfg.validate().map_err(|e| e.with_origin(&origin))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, v, max) in [
            ("max_batch", self.max_batch, 1024),
            ("queue_capacity", self.queue_capacity, 100_000),
            ("max_images", self.max_images, 1024),
            ("max_steps", self.max_steps, 100_000),
            ("max_body_bytes", self.max_body_bytes, 16 << 20),
            ("drift_window", self.drift_window, 1_000_000),
            ("max_connections", self.max_connections, 1_000_000),
        ] {
            if !(1..=max).contains(&v) {
                return Err(ConfigError::new(key, v, format!("1..={max}")));
            }
        }
        for (key, v, min, max) in [
            ("max_wait_ms", self.max_wait_ms, 0, 60_000),
            ("request_timeout_ms", self.request_timeout_ms, 1, 86_400_000),
            ("header_timeout_ms", self.header_timeout_ms, 1, 3_600_000),
            ("body_timeout_ms", self.body_timeout_ms, 1, 3_600_000),
            ("shutdown_timeout_ms", self.shutdown_timeout_ms, 1, 3_600_000),
        ] {
            if !(min..=max).contains(&v) {
                return Err(ConfigError::new(key, v, format!("{min}..={max} milliseconds")));
            }
        }
        if self.threads > 1024 {
            return Err(ConfigError::new("threads", self.threads, "0..=1024"));
        }
        check_range("max_guidance", self.max_guidance, 0.0, 100.0)?;
        if !(8..=16_384).contains(&self.max_side) {
            return Err(ConfigError::new("max_side", self.max_side, "8..=16384 pixels"));
        }
        difforge_config::DeviceChoice::parse("device", &self.device)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_values_are_refused_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        for (line, key) in [
            ("queue_capacity = 100000000000", "queue_capacity"),
            ("max_guidance = nan", "max_guidance"),
            ("max_wait_ms = 9223372036854775807", "max_wait_ms"),
            ("max_connections = 0", "max_connections"),
            ("max_side = 4", "max_side"),
            ("device = \"tpu\"", "device"),
            ("colour = 1", "colour"),
        ] {
            let path = dir.path().join("serve.toml");
            std::fs::write(&path, line).unwrap();
            let err = ServeConfig::load(Some(&path)).unwrap_err();
            assert!(err.to_string().contains(key) && err.to_string().contains("serve.toml"), "{line}: {err}");
        }
    }
}
