//! A server nobody can freeze: a flood of idle connections beyond the file limit, slow headers,
//! a half-sent request at shutdown, keys that are not there, reloads from anywhere or to a model
//! that cannot serve what is queued, paths shown to the wrong keys, and the training data gone.

use crate::common::{difforge, tiny_args, train_tiny, write_digit_folder};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "user-key-1";
const ADMIN: &str = "admin-key-2";

struct Server {
    child: Child,
    base: String,
    stderr: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `difforge serve` (under `prlimit` when `max_files` is given) with `serve_toml`.
fn start(dir: &Path, run: &Path, serve_toml: &str, max_files: Option<u32>, extra: &[&str]) -> Server {
    let cfg = dir.join("serve.toml");
    std::fs::write(&cfg, serve_toml).unwrap();
    let keys = dir.join("keys.txt");
    std::fs::write(&keys, format!("{KEY}\nadmin:{ADMIN}\n")).unwrap();
    let bin = assert_cmd::cargo::cargo_bin("difforge");
    let mut cmd = match max_files {
        Some(n) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={n}:{n}")).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let stderr = dir.join("serve.err");
    cmd.env("DIFFORGE_LOG", "info").args(["serve", "--bind", "127.0.0.1:0", "--device", "cpu", "--checkpoint"]).arg(run).arg("--config").arg(&cfg).args(extra);
    if !extra.contains(&"--no-auth") {
        cmd.arg("--api-keys-file").arg(&keys);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(std::fs::File::create(&stderr).unwrap()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base =
        line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line:?}: {}", std::fs::read_to_string(&stderr).unwrap_or_default())).to_string();
    Server { child, base, stderr }
}

fn get(url: &str, key: Option<&str>, timeout: Duration) -> Result<(u16, String), String> {
    let mut req = ureq::get(url).timeout(timeout);
    if let Some(k) = key {
        req = req.set("Authorization", &format!("bearer {k}"));
    }
    match req.call() {
        Ok(r) => Ok((r.status(), r.into_string().unwrap_or_default())),
        Err(ureq::Error::Status(s, r)) => Ok((s, r.into_string().unwrap_or_default())),
        Err(e) => Err(e.to_string()),
    }
}

fn post(url: &str, key: &str, body: &str) -> (u16, String) {
    match ureq::post(url).timeout(Duration::from_secs(120)).set("Authorization", &format!("Bearer {key}")).send_string(body) {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap_or_default()),
        Err(e) => panic!("POST {url}: {e}"),
    }
}

fn address(base: &str) -> String {
    base.trim_start_matches("http://").to_string()
}

#[test]
fn idle_connections_beyond_the_file_limit_do_not_stop_healthz() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train_tiny(&run, &["train.steps=2"]);
    let s = start(dir.path(), &run, "header_timeout_ms = 60000\n", Some(200), &[]);
    // 400 connections that never send a byte: twice the server's file limit.
    let idle: Vec<TcpStream> = (0..400).filter_map(|_| TcpStream::connect(address(&s.base)).ok()).collect();
    assert!(idle.len() >= 300, "only {} connections opened", idle.len());
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let health = get(&format!("{}/healthz", s.base), None, Duration::from_secs(20));
    assert_eq!(health.as_ref().map(|h| h.0), Ok(200), "{health:?} after {:?}", started.elapsed());
    drop(idle);
}

#[test]
fn slow_headers_are_cut_off_and_shutdown_has_a_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train_tiny(&run, &["train.steps=2"]);
    let mut s = start(dir.path(), &run, "header_timeout_ms = 1000\nshutdown_timeout_ms = 1000\n", None, &[]);
    let mut slow: Vec<TcpStream> = (0..50).map(|_| TcpStream::connect(address(&s.base)).unwrap()).collect();
    for c in &mut slow {
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    for c in &mut slow {
        let mut buf = Vec::new();
        // The server closes the connection (after a 408 or without a word): the read ends.
        let read = c.read_to_end(&mut buf);
        assert!(read.is_ok(), "a slow-header connection was not closed: {read:?}");
    }
    // A half-sent request at SIGTERM: the process still exits soon after the deadline.
    let mut half = TcpStream::connect(address(&s.base)).unwrap();
    half.write_all(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"n\"").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let pid = s.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let start = Instant::now();
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "the server did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    drop(half);
}

#[test]
fn keys_paths_and_reload_roots() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("runs").join("a");
    train_tiny(&run, &["train.steps=2"]);
    // A key file with only comments, and no keys at all, are refused; --no-auth serves openly.
    let comments = dir.path().join("comments.txt");
    std::fs::write(&comments, "# no keys yet\n\n").unwrap();
    let refused = |args: &[&str], expected: &str| {
        let out = difforge().args(["serve", "--bind", "127.0.0.1:0", "--checkpoint"]).arg(&run).args(args).env_remove("DIFFORGE_API_KEYS").output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
    };
    refused(&["--api-keys-file", comments.to_str().unwrap()], "at least one key");
    let short = dir.path().join("short.txt");
    std::fs::write(
        &short,
        "a-long-enough-key
admin:k
",
    )
    .unwrap();
    refused(&["--api-keys-file", short.to_str().unwrap()], "keys of at least 8 characters (entry 2 has 1");
    refused(&[], "--no-auth");
    let bad_toml = dir.path().join("bad.toml");
    std::fs::write(&bad_toml, "queue_capacity = 100000000000\n").unwrap();
    refused(&["--no-auth", "--config", bad_toml.to_str().unwrap()], "queue_capacity");
    {
        let open = start(dir.path(), &run, "", None, &["--no-auth"]);
        assert_eq!(get(&format!("{}/v1/models", open.base), None, Duration::from_secs(10)).map(|r| r.0), Ok(200));
    }

    let s = start(dir.path(), &run, "", None, &[]);
    // A lower-case scheme is fine; a user key sees no paths of the server's disk, an admin key does.
    let (status, user_view) = get(&format!("{}/v1/models", s.base), Some(KEY), Duration::from_secs(10)).unwrap();
    assert_eq!(status, 200);
    let where_it_lives = dir.path().display().to_string();
    assert!(!user_view.contains(&where_it_lives), "{user_view}");
    let (_, admin_view) = get(&format!("{}/v1/models", s.base), Some(ADMIN), Duration::from_secs(10)).unwrap();
    assert!(admin_view.contains(&where_it_lives), "{admin_view}");
    // Reloads read only below the folder that holds the served run.
    let outside = tempfile::tempdir().unwrap();
    let (status, body) = post(&format!("{}/admin/reload", s.base), ADMIN, &format!(r#"{{"checkpoint": "{}"}}"#, outside.path().display()));
    assert_eq!(status, 403, "{body}");
    let (status, body) = post(&format!("{}/admin/reload", s.base), ADMIN, r#"{"checkpoint": "/etc"}"#);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("reload_roots"), "{body}");
    // A broken path is a clean message, no panic text.
    let (status, body) = post(&format!("{}/admin/reload", s.base), ADMIN, &format!(r#"{{"checkpoint": "{}"}}"#, dir.path().join("runs/none").display()));
    assert_eq!(status, 422, "{body}");
    assert!(!body.contains("panicked"), "{body}");
}

#[test]
fn a_reload_to_fewer_classes_answers_queued_requests_409_and_the_data_is_not_needed() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("runs").join("ten");
    // The ten-class model trains on a folder, which is then deleted: the server must not need it.
    let data = dir.path().join("digits");
    write_digit_folder(&data, 10);
    std::fs::write(data.join("3").join("broken.png"), b"not a png").unwrap();
    let sets = ["train.steps=2", "data.source=\"folder\"", "data.val_fraction=0.2"];
    let out =
        difforge().arg("train").args(tiny_args(&sets)).arg("--set").arg(format!("data.path=\"{}\"", data.display())).arg("--out").arg(&run).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_dir_all(&data).unwrap();
    let two = dir.path().join("runs").join("two");
    let few = dir.path().join("two-digits");
    write_digit_folder(&few, 4);
    for d in 2..10 {
        std::fs::remove_dir_all(few.join(d.to_string())).unwrap();
    }
    let out = difforge()
        .arg("train")
        .args(tiny_args(&["train.steps=2", "data.source=\"folder\"", "model.num_classes=2"]))
        .arg("--set")
        .arg(format!("data.path=\"{}\"", few.display()))
        .arg("--out")
        .arg(&two)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let s = start(dir.path(), &run, "max_batch = 8\nmax_wait_ms = 0\nqueue_capacity = 64\n", None, &[]);
    let url = format!("{}/v1/generate", s.base);
    let clients: Vec<_> = (0..6)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || post(&url, KEY, &format!(r#"{{"class": 7, "n": 8, "steps": {}, "seed": {i}}}"#, 200 + i)))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let (status, body) = post(&format!("{}/admin/reload", s.base), ADMIN, &format!(r#"{{"checkpoint": "{}"}}"#, two.display()));
    assert_eq!(status, 200, "{body}");
    let results: Vec<(u16, String)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(results.iter().all(|(s, _)| *s == 200 || *s == 409), "{results:?}");
    assert!(results.iter().any(|(s, _)| *s == 409), "{results:?}");
    let conflict = &results.iter().find(|(s, _)| *s == 409).unwrap().1;
    assert!(conflict.contains("reloaded"), "{conflict}");
    // Output drift is still measured (against the statistics the checkpoint recorded), and the
    // server never read the training folder.
    let metrics = get(&format!("{}/metrics", s.base), Some(KEY), Duration::from_secs(10)).unwrap().1;
    assert!(metrics.lines().any(|l| l.starts_with("difforge_output_drift ") && !l.ends_with(" 0")), "{metrics}");
    let log = std::fs::read_to_string(&s.stderr).unwrap();
    assert!(!log.contains("skipping") && !log.contains("computing them once"), "{log}");
}

/// Raw HTTP on `stream`: sends `head` (and `body`), returns the status line's code, or None when
/// nothing comes back within `wait`.
fn status_of(stream: &mut TcpStream, head: &str, body: &[u8], wait: Duration) -> Option<u16> {
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    stream.set_read_timeout(Some(wait)).ok()?;
    let mut line = String::new();
    BufReader::new(stream.try_clone().ok()?).read_line(&mut line).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn generate_head(key: &str, length: u64) -> String {
    format!("POST /v1/generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n")
}

/// A body declared too large is 413 before a byte of it arrives; one that stalls is 408 after
/// `body_timeout_ms`; 60 stalled bodies over `max_connections = 50` leave /healthz and
/// /v1/generate answering once their deadline passes (they waited forever before).
#[test]
fn stalled_and_oversized_bodies_are_answered_and_free_their_slots() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train_tiny(&run, &["train.steps=2"]);
    let s = start(dir.path(), &run, "body_timeout_ms = 1000\nmax_connections = 50\n", None, &[]);
    let addr = address(&s.base);
    let started = Instant::now();
    let mut huge = TcpStream::connect(&addr).unwrap();
    assert_eq!(status_of(&mut huge, &generate_head(KEY, 99_999_999_999), b"{", Duration::from_secs(5)), Some(413));
    assert!(started.elapsed() < Duration::from_secs(5));
    let mut stalled = TcpStream::connect(&addr).unwrap();
    assert_eq!(status_of(&mut stalled, &generate_head(KEY, 16_000), b"{", Duration::from_secs(10)), Some(408));

    let flood: Vec<TcpStream> = (0..60)
        .filter_map(|_| {
            let mut c = TcpStream::connect(&addr).ok()?;
            c.write_all(generate_head(KEY, 16_000).as_bytes()).ok()?;
            c.write_all(b"{").ok()?;
            Some(c)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let health = get(&format!("{}/healthz", s.base), None, Duration::from_secs(10));
    assert_eq!(health.as_ref().map(|h| h.0), Ok(200), "{health:?}");
    let (status, body) = post(&format!("{}/v1/generate", s.base), KEY, r#"{"class": 3, "steps": 2}"#);
    assert_eq!(status, 200, "{body}");
    drop(flood);
}

/// `difforge serve` with a request that would run for minutes: it times out (504) and its work
/// is cancelled, so the requests after it are answered in their own time; SIGTERM during such
/// work answers it 503 and exits within `shutdown_timeout_ms`.
#[test]
fn abandoned_work_is_cancelled_and_shutdown_keeps_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train_tiny(&run, &["train.steps=2"]);
    let toml = "max_steps = 1000\nmax_images = 64\nrequest_timeout_ms = 1500\nshutdown_timeout_ms = 1000\nmax_wait_ms = 0\n";
    let mut s = start(dir.path(), &run, toml, None, &[]);
    let url = format!("{}/v1/generate", s.base);
    // 8 batches of 8 images, 1,000 steps each: tens of seconds on this model.
    let endless = r#"{"class": 1, "n": 64, "steps": 1000}"#;
    for _ in 0..3 {
        let (status, body) = post(&url, KEY, endless);
        assert_eq!(status, 504, "{body}");
    }
    for i in 0..20 {
        let started = Instant::now();
        let (status, body) = post(&url, KEY, r#"{"class": 2, "steps": 2}"#);
        assert_eq!(status, 200, "request {i} after the abandoned ones ({:?}): {body}", started.elapsed());
    }
    // A client that leaves: its work stops at once, not at its timeout.
    let mut leaving = TcpStream::connect(address(&s.base)).unwrap();
    leaving.write_all(generate_head(KEY, endless.len() as u64).as_bytes()).unwrap();
    leaving.write_all(endless.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    drop(leaving);
    let started = Instant::now();
    let (status, body) = post(&url, KEY, r#"{"class": 2, "steps": 2}"#);
    assert_eq!(status, 200, "{body}");
    assert!(started.elapsed() < Duration::from_millis(1000), "answered {:?} after the client left", started.elapsed());
    let (_, metrics) = get(&format!("{}/metrics", s.base), Some(KEY), Duration::from_secs(10)).unwrap();
    let cancelled = metrics.lines().find(|l| l.starts_with("difforge_abandoned_requests_total{when=\"running\"}")).unwrap_or_else(|| panic!("{metrics}"));
    assert!(cancelled.ends_with(" 4"), "{cancelled}");

    let waiting = {
        let url = url.clone();
        std::thread::spawn(move || post(&url, KEY, endless))
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(Command::new("kill").args(["-TERM", &s.child.id().to_string()]).status().unwrap().success());
    let signalled = Instant::now();
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(signalled.elapsed() < Duration::from_millis(1000 + 2000), "alive {:?} after SIGTERM", signalled.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}: {}", std::fs::read_to_string(&s.stderr).unwrap_or_default());
    let (status, body) = waiting.join().unwrap();
    assert_eq!(status, 503, "the request running at SIGTERM: {body}");
}
