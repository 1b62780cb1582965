//! HTTP handlers and the middleware around them (request ids, logs, metrics, auth).

use crate::auth::{Access, Keys};
use crate::config::ServeConfig;
use crate::request::{self, FieldError, Format, Limits};
use crate::worker::{Images, Job, JobError, Shared};
use axum::body::Bytes;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use base64::Engine;
use difforge_data::PlanarImages;
use difforge_model::Condition;
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::Device;

pub struct AppState {
    pub shared: Arc<Shared>,
    pub jobs: std::sync::Mutex<Option<SyncSender<Job>>>,
    pub keys: Keys,
    pub config: ServeConfig,
    pub checkpoint: tokio::sync::Mutex<PathBuf>,
    /// Applied to every checkpoint loaded, including reloads.
    pub adapter: Option<crate::loaded::AdapterChoice>,
    /// Canonical folders /admin/reload may load from.
    pub reload_roots: Vec<PathBuf>,
    pub device: Device,
    pub seeds: AtomicU64,
    pub request_ids: AtomicU64,
}

pub fn error(status: StatusCode, field: Option<&str>, message: impl Into<String>) -> Response {
    let mut body = json!({ "error": { "message": message.into() } });
    if let Some(f) = field {
        body["error"]["field"] = json!(f);
    }
    (status, Json(body)).into_response()
}

fn field_error(e: FieldError) -> Response {
    error(StatusCode::BAD_REQUEST, Some(&e.field), e.message)
}

/// Assigns a request id, logs the request (never its headers), counts it by endpoint and status.
pub async fn observe(State(app): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let id = format!("req-{:08}", app.request_ids.fetch_add(1, Ordering::Relaxed));
    let endpoint = req.extensions().get::<MatchedPath>().map_or("other".to_string(), |p| p.as_str().to_string());
    let method = req.method().clone();
    let start = Instant::now();
    let mut resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    app.shared.metrics.requests.with_label_values(&[endpoint.as_str(), status.as_str()]).inc();
    tracing::info!(request_id = %id, %method, %endpoint, status = %status, ms = start.elapsed().as_millis() as u64, "request");
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// Bearer-key auth: /healthz, /readyz and the page are open; /admin/* needs an admin key.
pub async fn authorize(State(app): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if app.keys.is_open() || matches!(path, "/healthz" | "/readyz" | "/") {
        return next.run(req).await;
    }
    let presented = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer_token);
    match presented.and_then(|k| app.keys.check(k)) {
        None => {
            let mut r = error(StatusCode::UNAUTHORIZED, None, "missing or unknown API key: send `Authorization: Bearer KEY`");
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
        Some(Access::User) if path.starts_with("/admin/") => error(StatusCode::FORBIDDEN, None, "this endpoint needs an admin key"),
        Some(access) => {
            let mut req = req;
            req.extensions_mut().insert(access);
            next.run(req).await
        }
    }
}

/// Reads a request's body before any handler sees it: 413 as soon as the declared
/// `Content-Length` exceeds `max_body_bytes` (without waiting for a byte of it), 413 when more
/// arrives than that, 408 when it does not all arrive within `body_timeout_ms`.
pub async fn read_body(State(app): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let limit = app.config.max_body_bytes;
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return close(body_too_large(limit));
    }
    let (parts, body) = req.into_parts();
    let timeout = Duration::from_millis(app.config.body_timeout_ms);
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => close(error(StatusCode::REQUEST_TIMEOUT, None, format!("the body did not arrive within {} ms", app.config.body_timeout_ms))),
        Ok(Err(_)) => close(body_too_large(limit)),
        Ok(Ok(bytes)) => next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await,
    }
}

/// `resp` with `Connection: close`: the unread rest of the body must not be parsed as the next
/// request, and the slot should go to someone else.
fn close(mut resp: Response) -> Response {
    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// The token of an `Authorization: Bearer TOKEN` header (the scheme is case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "alive" }))
}

pub async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    let ready = app.shared.ready.load(Ordering::SeqCst);
    let alive = app.shared.worker_alive.load(Ordering::SeqCst);
    if ready && alive {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        let why = if alive { "the model is loading" } else { "the model worker has stopped" };
        error(StatusCode::SERVICE_UNAVAILABLE, None, why)
    }
}

/// The loaded model. Paths on the server's disk (the checkpoint, the adapter, the training data,
/// the base of a fine-tune) are shown to admin keys only.
pub async fn models(State(app): State<Arc<AppState>>, req: Request) -> Response {
    let info = app.shared.info.read().unwrap_or_else(|p| p.into_inner()).clone();
    let admin = req.extensions().get::<Access>() == Some(&Access::Admin);
    let shown = if admin { serde_json::to_value(&info) } else { serde_json::to_value(info.without_paths()) };
    match shown {
        Ok(v) => Json(json!({ "models": [v] })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, None, format!("cannot describe the model: {e}")),
    }
}

pub async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], app.shared.metrics.render()).into_response()
}

/// The page, with the sampler choices of the registry filled in.
pub async fn page() -> Html<String> {
    static PAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    Html(
        PAGE.get_or_init(|| {
            let options: String = difforge_diffusion::SamplerKind::all()
                .map(|k| format!("<option title=\"{}\">{}</option>", difforge_report::html::escape(k.info().about), difforge_report::html::escape(k.name())))
                .collect();
            include_str!("page.html").replace("<!--SAMPLER_OPTIONS-->", &options)
        })
        .clone(),
    )
}

fn png_bytes(img: &image::DynamicImage) -> Result<Vec<u8>, image::ImageError> {
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)?;
    Ok(out)
}

fn encode(images: &Images, format: Format, seed: u64, condition: &Condition) -> Result<Response, image::ImageError> {
    let planar = PlanarImages { data: &images.data, count: images.count, channels: images.channels, height: images.height, width: images.width };
    let seed_header = [("x-difforge-seed", seed.to_string())];
    match format {
        Format::Png => {
            let img = if images.count == 1 { planar.image(0) } else { planar.grid((images.count as f64).sqrt().ceil() as usize) };
            Ok((seed_header, [(header::CONTENT_TYPE, "image/png")], png_bytes(&img)?).into_response())
        }
        Format::Json => {
            let b64 = base64::engine::general_purpose::STANDARD;
            let pngs = (0..images.count).map(|i| png_bytes(&planar.image(i)).map(|b| b64.encode(b))).collect::<Result<Vec<_>, _>>()?;
            let mut body = json!({ "seed": seed, "class": null, "images": pngs });
            match condition {
                Condition::Class(c) => body["class"] = json!(c),
                Condition::Text(prompt) => body["prompt"] = json!(prompt),
                Condition::Unconditional => {}
            }
            Ok((seed_header, Json(body)).into_response())
        }
    }
}

pub async fn generate(State(app): State<Arc<AppState>>, body: Bytes) -> Response {
    let body = match request::parse(&body) {
        Ok(b) => b,
        Err(e) => return field_error(e),
    };
    let (kind, defaults, timesteps, size) = {
        let info = app.shared.info.read().unwrap_or_else(|p| p.into_inner());
        (info.kind, info.defaults.clone(), info.timesteps, info.size_rule(app.config.max_side))
    };
    let limits = Limits { serve: &app.config, kind, size, defaults: &defaults, timesteps };
    let fresh = app.seeds.fetch_add(0x9E37_79B9, Ordering::Relaxed);
    let req = match request::validate(body, &limits, fresh) {
        Ok(r) => r,
        Err(e) => return field_error(e),
    };
    let (seed, format, condition) = (req.seed, req.format, req.condition.clone());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let timeout = Duration::from_millis(app.config.request_timeout_ms);
    let job = Job { request: req, enqueued: Instant::now(), deadline: Instant::now() + timeout, reply: tx };
    let sender = app.jobs.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let Some(sender) = sender else {
        return error(StatusCode::SERVICE_UNAVAILABLE, None, "the server is shutting down");
    };
    match sender.try_send(job) {
        Ok(()) => app.shared.metrics.queue_depth.inc(),
        Err(TrySendError::Full(_)) => {
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, None, format!("the queue is full ({} requests waiting); retry later", app.config.queue_capacity));
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        }
        Err(TrySendError::Disconnected(_)) => return error(StatusCode::SERVICE_UNAVAILABLE, None, "the model worker has stopped"),
    }
    match tokio::time::timeout(timeout, rx).await {
        Err(_) | Ok(Ok(Err(JobError::TimedOut))) => {
            error(StatusCode::GATEWAY_TIMEOUT, None, format!("not answered within {} ms", app.config.request_timeout_ms))
        }
        Ok(Ok(Err(JobError::Conflict(field, why)))) => error(StatusCode::CONFLICT, Some(field), why),
        Ok(Ok(Err(JobError::Failed(why)))) => error(StatusCode::INTERNAL_SERVER_ERROR, None, why),
        Ok(Ok(Err(JobError::ShuttingDown))) => error(StatusCode::SERVICE_UNAVAILABLE, None, "the server is shutting down; retry on another instance"),
        Ok(Err(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, None, "generation failed"),
        Ok(Ok(Ok(images))) => {
            let resp = tokio::task::spawn_blocking(move || encode(&images, format, seed, &condition)).await;
            match resp {
                Ok(Ok(r)) => r,
                _ => error(StatusCode::INTERNAL_SERVER_ERROR, None, "encoding the images failed"),
            }
        }
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReloadBody {
    checkpoint: Option<PathBuf>,
}

/// Loads a checkpoint, warms it, then swaps it in between batches; a broken one is refused and
/// the running model stays.
/// Why a reload did not happen.
pub enum ReloadError {
    /// The path lies outside the folders reloads may read (403).
    Outside(String),
    /// The checkpoint could not be loaded (422).
    Refused(String),
}

/// `path` (canonical) if it lies in one of the reload roots.
fn within_roots(app: &AppState, path: &std::path::Path) -> Result<PathBuf, ReloadError> {
    let canonical = path.canonicalize().map_err(|e| ReloadError::Refused(format!("{}: {e}", path.display())))?;
    if app.reload_roots.iter().any(|root| canonical.starts_with(root)) {
        Ok(canonical)
    } else {
        let roots: Vec<String> = app.reload_roots.iter().map(|r| r.display().to_string()).collect();
        Err(ReloadError::Outside(format!("{} is outside the folders reloads may read ({}; serve.toml reload_roots)", path.display(), roots.join(", "))))
    }
}

pub async fn reload_checkpoint(app: &Arc<AppState>, path: Option<PathBuf>) -> Result<crate::loaded::ModelInfo, ReloadError> {
    let mut current = app.checkpoint.lock().await;
    let target = match path {
        Some(p) => within_roots(app, &p)?,
        None => current.clone(),
    };
    let device = app.device;
    let t = target.clone();
    let adapter = app.adapter.clone();
    let load = move || std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| crate::loaded::load(&t, adapter.as_ref(), device)));
    let loaded = match tokio::task::spawn_blocking(load).await {
        Ok(Ok(result)) => result.map_err(ReloadError::Refused),
        Ok(Err(_)) | Err(_) => Err(ReloadError::Refused("loading the checkpoint failed inside libtorch (a damaged or mismatched file?)".into())),
    };
    let loaded = match loaded {
        Ok(l) => l,
        Err(e) => {
            app.shared.metrics.reloads.with_label_values(&["refused"]).inc();
            return Err(e);
        }
    };
    let info = loaded.info.clone();
    let shared = app.shared.clone();
    tokio::task::spawn_blocking(move || {
        let mut model = shared.model.lock().unwrap_or_else(|p| p.into_inner());
        *model = loaded;
        *shared.info.write().unwrap_or_else(|p| p.into_inner()) = model.info.clone();
    })
    .await
    .map_err(|_| ReloadError::Refused("swapping the model in failed".into()))?;
    *current = target;
    app.shared.metrics.reloads.with_label_values(&["ok"]).inc();
    tracing::info!(checkpoint = %info.checkpoint.display(), hash = %info.checkpoint_hash, "model reloaded");
    Ok(info)
}

pub async fn reload(State(app): State<Arc<AppState>>, body: Bytes) -> Response {
    let parsed: Result<ReloadBody, _> = if body.iter().all(u8::is_ascii_whitespace) { Ok(ReloadBody::default()) } else { serde_json::from_slice(&body) };
    let body = match parsed {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, Some("checkpoint"), e.to_string()),
    };
    match reload_checkpoint(&app, body.checkpoint).await {
        Ok(info) => Json(json!({ "reloaded": info })).into_response(),
        Err(ReloadError::Outside(e)) => error(StatusCode::FORBIDDEN, Some("checkpoint"), e),
        Err(ReloadError::Refused(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, Some("checkpoint"), format!("refused, the running model stays: {e}")),
    }
}

pub async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, None, "no such endpoint: see GET /, POST /v1/generate, GET /v1/models, /healthz, /readyz, /metrics, POST /admin/reload")
}

pub fn body_too_large(limit: usize) -> Response {
    error(StatusCode::PAYLOAD_TOO_LARGE, None, format!("the body is larger than {limit} bytes"))
}
