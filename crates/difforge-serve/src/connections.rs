//! Accepting connections so that nobody can freeze the server: at most `max_connections` open at
//! once (a new one at the limit closes the oldest connection that has not sent a byte), request
//! headers must arrive within `header_timeout_ms` (which also closes idle keep-alive
//! connections), the file-descriptor soft limit is raised at start, and shutdown stops accepting,
//! lets requests in flight finish and closes what is left after `shutdown_timeout_ms`.

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};

/// File descriptors kept free for the model, its files and logs.
const RESERVED_FDS: u64 = 64;

/// How the server treats connections (from serve.toml).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub shutdown_timeout: Duration,
}

/// Raises the soft limit on open files to the hard one and returns the number of connections
/// that fits under it (at most `wanted`).
pub fn fit_to_file_limit(wanted: usize) -> usize {
    let soft = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!("cannot raise the open-file limit: {e}");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(s, _)| s)
        }
    };
    let fits = soft.saturating_sub(RESERVED_FDS).max(1) as usize;
    if fits < wanted {
        tracing::warn!("max_connections = {wanted} does not fit under the open-file limit of {soft}: at most {fits} connections");
    }
    wanted.min(fits)
}

/// A TCP stream that notes when it first delivers a byte: until then its connection is idle and
/// may be closed to make room.
struct Watched {
    stream: TcpStream,
    spoke: Arc<AtomicBool>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.spoke.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// One open connection: whether it has sent anything, and how to close it.
type Handle = (Arc<AtomicBool>, oneshot::Sender<()>);

/// The open connections, oldest first.
#[derive(Default)]
struct Open {
    next: AtomicU64,
    by_age: Mutex<BTreeMap<u64, Handle>>,
}

impl Open {
    fn add(&self, spoke: Arc<AtomicBool>) -> (u64, oneshot::Receiver<()>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.by_age.lock().unwrap_or_else(|p| p.into_inner()).insert(id, (spoke, tx));
        (id, rx)
    }

    fn remove(&self, id: u64) {
        self.by_age.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    /// Closes the oldest connection that has not sent anything; false when every one has.
    fn evict_idle(&self) -> bool {
        let mut open = self.by_age.lock().unwrap_or_else(|p| p.into_inner());
        let idle = open.iter().find(|(_, (spoke, _))| !spoke.load(Ordering::Relaxed)).map(|(id, _)| *id);
        match idle.and_then(|id| open.remove(&id)) {
            Some((_, close)) => {
                // The connection's task may already be ending; either way it is gone.
                let _ = close.send(());
                true
            }
            None => false,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then drains within the deadline.
pub async fn serve(listener: TcpListener, router: axum::Router, limits: Limits, shutdown: impl Future<Output = ()>) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let open = Arc::new(Open::default());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors, most likely: make room, then try again shortly.
                    tracing::warn!("accepting a connection failed: {e}");
                    open.evict_idle();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if permits.available_permits() == 0 && !open.evict_idle() {
            tracing::debug!("connection limit reached with every connection busy: waiting");
        }
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let spoke = Arc::new(AtomicBool::new(false));
        let (id, close) = open.add(spoke.clone());
        let io = TokioIo::new(Watched { stream, spoke });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
        let conn = graceful.watch(http.serve_connection(io, TowerToHyperService::new(router.clone())));
        let open = open.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = conn => {}
                _ = close => {}
            }
            open.remove(id);
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!("shutdown: connections still open after {} ms were closed", limits.shutdown_timeout.as_millis());
    }
}
