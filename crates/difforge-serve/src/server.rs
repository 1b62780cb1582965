//! Building the router, listening, SIGHUP reloads and graceful shutdown (SIGTERM/SIGINT: stop
//! accepting, answer everything queued, then exit).

use crate::auth::Keys;
use crate::config::ServeConfig;
use crate::drift::Rolling;
use crate::metrics::Metrics;
use crate::routes::{self, AppState};
use crate::worker::{self, Shared};
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use difforge_core::ConfigError;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};

pub struct ServeOptions {
    pub checkpoint: PathBuf,
    pub adapter: Option<crate::loaded::AdapterChoice>,
    pub config: ServeConfig,
    pub keys: Keys,
}

pub fn router(app: Arc<AppState>) -> Router {
    let limit = app.config.max_body_bytes;
    Router::new()
        .route("/", get(routes::page))
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics))
        .route("/v1/models", get(routes::models))
        .route("/v1/generate", post(routes::generate))
        .route("/admin/reload", post(routes::reload))
        .fallback(routes::not_found)
        .layer(axum::middleware::from_fn_with_state(app.clone(), routes::read_body))
        .layer(axum::middleware::from_fn_with_state(app.clone(), routes::authorize))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(move |r: axum::response::Response| async move {
            if r.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                routes::body_too_large(limit)
            } else {
                r
            }
        }))
        .layer(axum::middleware::from_fn_with_state(app.clone(), routes::observe))
        .with_state(app)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("shutting down: finishing queued requests");
}

async fn reload_on_sighup(app: Arc<AppState>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
    while hup.recv().await.is_some() {
        match routes::reload_checkpoint(&app, None).await {
            Ok(info) => tracing::info!("SIGHUP: reloaded {} ({})", info.checkpoint.display(), info.checkpoint_hash),
            Err(routes::ReloadError::Refused(e) | routes::ReloadError::Outside(e)) => tracing::warn!("SIGHUP: reload refused, the running model stays: {e}"),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// serve.toml, the key file, a flag.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Other(String),
}

impl From<String> for ServeError {
    fn from(s: String) -> ServeError {
        ServeError::Other(s)
    }
}

/// Where reloads may read by default: the folder holding the served run (for
/// `RUN/checkpoints/NAME`, the folder holding RUN).
fn default_reload_root(checkpoint: &std::path::Path) -> std::path::PathBuf {
    let path = checkpoint.canonicalize().unwrap_or_else(|_| checkpoint.to_path_buf());
    let run = match path.parent() {
        Some(parent) if parent.file_name().is_some_and(|n| n == "checkpoints") => parent.parent().unwrap_or(parent).to_path_buf(),
        _ => path.clone(),
    };
    run.parent().map_or(run.clone(), std::path::Path::to_path_buf)
}

/// Loads the model, serves until SIGTERM/SIGINT, drains the queue and returns.
pub fn serve(opts: ServeOptions) -> Result<(), ServeError> {
    let cfg = opts.config.clone();
    let settings = difforge_model::device::DeviceSettings {
        key: "device",
        device: &cfg.device,
        threads: cfg.threads,
        precision: difforge_config::Precision::Fp32,
        kernels: difforge_config::CpuKernels::Portable,
        trains: false,
    };
    let device = difforge_model::device::prepare(&settings)?;
    let loaded = crate::loaded::load(&opts.checkpoint, opts.adapter.as_ref(), device)?;
    let metrics = Metrics::new().map_err(|e| ServeError::Other(e.to_string()))?;
    if cfg.feature_drift_every > 0 && !loaded.training_data {
        tracing::warn!(
            "feature_drift_every: the served model has no training data to compare its outputs with (a published folder); the feature drift monitor is off"
        );
    }
    let feature_drift = (cfg.feature_drift_every > 0 && loaded.training_data).then(|| {
        let gauges =
            crate::feature_drift::Gauges { fd: metrics.output_fd.clone(), images: metrics.drift_images.clone(), dropped: metrics.drift_dropped.clone() };
        crate::feature_drift::spawn(loaded.model.config(), cfg.drift_window, cfg.feature_drift_every, gauges)
    });
    let shared = Arc::new(Shared {
        info: RwLock::new(loaded.info.clone()),
        model: Mutex::new(loaded),
        metrics,
        rolling: Mutex::new(Rolling::new(cfg.drift_window)),
        feature_drift,
        ready: AtomicBool::new(true),
        worker_alive: AtomicBool::new(true),
        work_until: Mutex::new(None),
    });
    let (tx, rx) = std::sync::mpsc::sync_channel(cfg.queue_capacity);
    let worker = worker::spawn(shared.clone(), rx, cfg.clone());
    let seed0 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let reload_roots = if cfg.reload_roots.is_empty() { vec![default_reload_root(&opts.checkpoint)] } else { cfg.reload_roots.clone() };
    let reload_roots = reload_roots
        .iter()
        .map(|r| r.canonicalize().map_err(|e| ConfigError::new("reload_roots", r.display(), format!("existing folders ({e})"))))
        .collect::<Result<Vec<_>, _>>()?;
    let app = Arc::new(AppState {
        shared,
        jobs: Mutex::new(Some(tx)),
        keys: opts.keys,
        config: cfg.clone(),
        checkpoint: tokio::sync::Mutex::new(opts.checkpoint.clone()),
        adapter: opts.adapter.clone(),
        reload_roots,
        device,
        seeds: AtomicU64::new(seed0),
        request_ids: AtomicU64::new(1),
    });
    let shutdown_timeout = std::time::Duration::from_millis(cfg.shutdown_timeout_ms);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| ServeError::Other(e.to_string()))?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&cfg.bind).await.map_err(|e| ServeError::Other(format!("cannot listen on {}: {e}", cfg.bind)))?;
        let addr = listener.local_addr().map_err(|e| ServeError::Other(e.to_string()))?;
        if app.keys.is_open() {
            tracing::warn!("--no-auth: the API is open to anyone who can reach {addr}");
        }
        println!("listening on http://{addr}");
        let _ = std::io::stdout().flush();
        tokio::spawn(reload_on_sighup(app.clone()));
        let limits = crate::connections::Limits {
            max_connections: crate::connections::fit_to_file_limit(cfg.max_connections),
            header_timeout: std::time::Duration::from_millis(cfg.header_timeout_ms),
            shutdown_timeout,
        };
        let shared = app.shared.clone();
        let shutdown = async move {
            shutdown_signal().await;
            shared.stop_work_at(std::time::Instant::now() + work_after_signal(shutdown_timeout));
        };
        crate::connections::serve(listener, router(app.clone()), limits, shutdown).await;
        Ok::<(), ServeError>(())
    })?;
    // Every connection is closed: drop the queue's sender so the worker ends once drained (what
    // is left is answered 503 without work). A step already running is not waited for long.
    app.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
    if !worker.finished_within(WORKER_GRACE) {
        tracing::warn!("the model worker is still inside a denoising step; exiting without it");
        return Ok(());
    }
    tracing::info!("stopped");
    Ok(())
}

/// How long after the connections are closed the worker may take to end its current step.
const WORKER_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Of the shutdown deadline, the time queued and running work may go on: the rest is left to
/// answer what is still waiting (503) before the connections are closed.
fn work_after_signal(shutdown_timeout: std::time::Duration) -> std::time::Duration {
    shutdown_timeout.saturating_sub((shutdown_timeout / 4).min(std::time::Duration::from_secs(2)))
}
