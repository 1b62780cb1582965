//! The real server on a free loopback port: every endpoint, auth, validation, limits, 429 under
//! a full queue, reload (good and broken checkpoint) and graceful shutdown.

use crate::common::train_tiny;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub(crate) struct Server {
    child: Child,
    pub(crate) base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start(run: &Path, config: &Path, keys: &Path) -> Server {
    start_with(run, config, keys, &[])
}

/// `start` with more flags for `difforge serve`.
pub(crate) fn start_with(run: &Path, config: &Path, keys: &Path, extra: &[&std::ffi::OsStr]) -> Server {
    // Features of real images (the feature drift monitor) are cached beside the config.
    let cache = config.parent().unwrap_or(Path::new(".")).join("cache");
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("difforge"))
        .env("DIFFORGE_CACHE_DIR", cache)
        .args(["serve", "--bind", "127.0.0.1:0", "--device", "cpu", "--checkpoint"])
        .arg(run)
        .arg("--config")
        .arg(config)
        .arg("--api-keys-file")
        .arg(keys)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected first line {line:?}")).to_string();
    Server { child, base }
}

pub(crate) struct Reply {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

pub(crate) fn call(method: &str, url: &str, key: Option<&str>, body: Option<&str>) -> Reply {
    let mut req = ureq::request(method, url).timeout(Duration::from_secs(120));
    if let Some(k) = key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    let result = match body {
        Some(b) => req.set("Content-Type", "application/json").send_string(b),
        None => req.call(),
    };
    let resp = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    let headers = resp.headers_names().into_iter().map(|n| (n.clone(), resp.header(&n).unwrap_or_default().to_string())).collect();
    let mut bytes = Vec::new();
    resp.into_reader().read_to_end(&mut bytes).unwrap();
    Reply { status, headers, body: bytes }
}

pub(crate) const KEY: &str = "user-key-123";
const ADMIN: &str = "admin-key-456";

fn setup(dir: &Path, queue: usize) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let run = dir.join("run");
    train_tiny(&run, &["train.steps=6", "train.checkpoint_every=3"]);
    let keys = dir.join("keys.txt");
    std::fs::write(&keys, format!("# test keys\n{KEY}\nadmin:{ADMIN}\n")).unwrap();
    let cfg = dir.join("serve.toml");
    std::fs::write(
        &cfg,
        format!("max_batch = 4\nmax_wait_ms = 20\nqueue_capacity = {queue}\nmax_body_bytes = 1024\nmax_images = 8\nrequest_timeout_ms = 60000\n"),
    )
    .unwrap();
    (run, cfg, keys)
}

#[test]
fn endpoints_auth_validation_limits_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    let (run, cfg, keys) = setup(dir.path(), 16);
    let s = start(&run, &cfg, &keys);
    let url = |p: &str| format!("{}{p}", s.base);

    assert_eq!(call("GET", &url("/healthz"), None, None).status, 200);
    assert_eq!(call("GET", &url("/readyz"), None, None).status, 200);
    let page = call("GET", &url("/"), None, None);
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("Generate"));

    // Auth.
    assert_eq!(call("GET", &url("/v1/models"), None, None).status, 401);
    assert_eq!(call("GET", &url("/v1/models"), Some("wrong"), None).status, 401);
    assert_eq!(call("GET", &url("/metrics"), None, None).status, 401);
    assert_eq!(call("POST", &url("/v1/generate"), None, Some("{}")).status, 401);
    let models = call("GET", &url("/v1/models"), Some(KEY), None);
    assert_eq!(models.status, 200);
    let m = &models.json()["models"][0];
    assert_eq!(m["classes"].as_array().unwrap().len(), 10);
    assert_eq!(m["image_size"], 8);
    let hash = m["checkpoint_hash"].as_str().unwrap().to_string();
    assert_eq!(hash.len(), 64);

    // Generation: PNG, grids, JSON, and the same request and seed give the same bytes.
    let one = call("POST", &url("/v1/generate"), Some(KEY), Some(r#"{"class": 3, "seed": 42, "steps": 4}"#));
    assert_eq!(one.status, 200);
    assert_eq!(one.header("content-type"), Some("image/png"));
    assert_eq!(one.header("x-difforge-seed"), Some("42"));
    assert_eq!(image::load_from_memory(&one.body).unwrap().width(), 8);
    let again = call("POST", &url("/v1/generate"), Some(KEY), Some(r#"{"class": 3, "seed": 42, "steps": 4}"#));
    assert_eq!(one.body, again.body);
    let grid = call("POST", &url("/v1/generate"), Some(KEY), Some(r#"{"class": 3, "seed": 40, "n": 4, "steps": 4}"#));
    assert_eq!(image::load_from_memory(&grid.body).unwrap().width(), 2 * 10 + 2);
    let js = call("POST", &url("/v1/generate"), Some(KEY), Some(r#"{"class": 3, "seed": 40, "n": 4, "steps": 4, "format": "json"}"#)).json();
    assert_eq!(js["seed"], 40);
    let images = js["images"].as_array().unwrap();
    assert_eq!(images.len(), 4);
    // Image 2 of that request has seed 42: the same bytes as the request for seed 42 alone.
    use base64::Engine;
    let third = base64::engine::general_purpose::STANDARD.decode(images[2].as_str().unwrap()).unwrap();
    assert_eq!(third, one.body);
    let unseeded = call("POST", &url("/v1/generate"), Some(KEY), Some(r#"{"steps": 2}"#));
    assert_eq!(unseeded.status, 200);
    assert!(unseeded.header("x-difforge-seed").unwrap().parse::<u64>().is_ok());

    // Validation errors name the field.
    for (body, field) in [
        (r#"{"class": 10}"#, "class"),
        (r#"{"n": 9}"#, "n"),
        (r#"{"n": 0}"#, "n"),
        (r#"{"steps": 100000}"#, "steps"),
        (r#"{"sampler": "heun"}"#, "sampler"),
        (r#"{"guidance": 1e9}"#, "guidance"),
        (r#"{"format": "gif"}"#, "format"),
        (r#"{"seed": -1}"#, "seed"),
        (r#"{"prompt": "a cat"}"#, "prompt"),
    ] {
        let r = call("POST", &url("/v1/generate"), Some(KEY), Some(body));
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.json()["error"]["field"], field, "{body}");
    }
    let r = call("POST", &url("/v1/generate"), Some(KEY), Some("{not json"));
    assert_eq!(r.status, 400);
    let big = format!(r#"{{"class": 1, "pad": "{}"}}"#, "x".repeat(4000));
    let r = call("POST", &url("/v1/generate"), Some(KEY), Some(&big));
    assert_eq!(r.status, 413);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("1024"));
    assert_eq!(call("GET", &url("/nope"), Some(KEY), None).status, 404);

    // Metrics.
    let text = String::from_utf8(call("GET", &url("/metrics"), Some(KEY), None).body).unwrap();
    for needle in [
        "difforge_images_generated_total 11",
        "difforge_http_requests_total{endpoint=\"/v1/generate\",status=\"400\"}",
        "difforge_queue_wait_seconds_count",
        "difforge_compute_seconds_bucket",
        "difforge_batch_images_count",
        "difforge_queue_depth 0",
        "difforge_images_by_class_total{class=\"3\"} 10",
        "difforge_output_drift",
        "difforge_resident_memory_bytes",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }

    // Reload: only admins; a broken checkpoint is refused and the old model stays; a good one
    // is swapped in.
    let reload = url("/admin/reload");
    assert_eq!(call("POST", &reload, Some(KEY), Some("{}")).status, 403);
    let broken = dir.path().join("broken");
    let src = run.join("checkpoints/step-00000003");
    std::fs::create_dir_all(&broken).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), broken.join(e.file_name())).unwrap();
    }
    let mut bytes = std::fs::read(broken.join("ema.safetensors")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(broken.join("ema.safetensors"), bytes).unwrap();
    let r = call("POST", &reload, Some(ADMIN), Some(&format!(r#"{{"checkpoint": "{}"}}"#, broken.display())));
    assert_eq!(r.status, 422);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("ema.safetensors"));
    let still = call("GET", &url("/v1/models"), Some(KEY), None).json();
    assert_eq!(still["models"][0]["checkpoint_hash"], hash.as_str());
    let good = run.join("checkpoints/step-00000003");
    let r = call("POST", &reload, Some(ADMIN), Some(&format!(r#"{{"checkpoint": "{}"}}"#, good.display())));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let now = call("GET", &url("/v1/models"), Some(KEY), None).json();
    assert_ne!(now["models"][0]["checkpoint_hash"], hash.as_str());
    assert_eq!(now["models"][0]["step"], 3);
    assert_eq!(call("POST", &url("/v1/generate"), Some(KEY), Some(r#"{"seed": 1, "steps": 2}"#)).status, 200);
}

#[test]
fn a_full_queue_answers_429_and_sigterm_drains() {
    let dir = tempfile::tempdir().unwrap();
    let (run, cfg, keys) = setup(dir.path(), 2);
    let mut s = start(&run, &cfg, &keys);
    let url = format!("{}/v1/generate", s.base);
    // Slow requests (many steps, incompatible so they cannot share a batch) from 12 clients.
    let handles: Vec<_> = (0..12)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let body = format!(r#"{{"steps": {}, "n": 8, "seed": {i}}}"#, 150 + i);
                let r = call("POST", &url, Some(KEY), Some(&body));
                (r.status, r.header("retry-after").map(str::to_string))
            })
        })
        .collect();
    let results: Vec<(u16, Option<String>)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let refused: Vec<_> = results.iter().filter(|(s, _)| *s == 429).collect();
    assert!(!refused.is_empty(), "{results:?}");
    assert!(refused.iter().all(|(_, retry)| retry.as_deref() == Some("1")));
    assert!(results.iter().all(|(s, _)| *s == 200 || *s == 429), "{results:?}");

    // SIGTERM while a request is running: it is answered, then the process exits 0.
    let slow = std::thread::spawn({
        let url = url.clone();
        move || call("POST", &url, Some(KEY), Some(r#"{"steps": 200, "n": 8}"#)).status
    });
    std::thread::sleep(Duration::from_millis(300));
    let pid = s.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert_eq!(slow.join().unwrap(), 200);
    let status = s.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// The number after `name ` in a Prometheus text exposition.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn feature_drift_reports_fd_effnet_of_recent_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let (run, cfg, keys) = setup(dir.path(), 16);
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{text}feature_drift_every = 4\ndrift_window = 8\n")).unwrap();
    let s = start(&run, &cfg, &keys);
    for seed in 0..2 {
        let body = format!(r#"{{"n": 4, "class": 3, "steps": 2, "seed": {seed}}}"#);
        assert_eq!(call("POST", &format!("{}/v1/generate", s.base), Some(KEY), Some(&body)).status, 200);
    }
    // The monitor loads EfficientNet and the validation features first, then scores.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let text = String::from_utf8(call("GET", &format!("{}/metrics", s.base), Some(KEY), None).body).unwrap();
        let fd = metric(&text, "difforge_output_fd_effnet").unwrap_or(0.0);
        if fd > 0.0 {
            assert!(fd.is_finite(), "FD-EffNet of the outputs: {fd}");
            let scored = metric(&text, "difforge_feature_drift_images_total").unwrap_or(0.0);
            assert!(scored >= 4.0, "an update comes every 4 scored images: {scored} scored");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no FD-EffNet after 120 s:\n{text}");
        std::thread::sleep(Duration::from_millis(500));
    }
}
