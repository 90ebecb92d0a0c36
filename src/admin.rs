//! The admin listener: `/metrics`, `/healthz`, `/readyz` and `/config`, on its own port.
//!
//! It is bounded like the public listener, so that it can never take descriptors or memory from
//! it: `admin.max_connections` caps its connections (beyond it a new one is closed at once),
//! `limits.header_read_timeout` closes a connection that sends no byte or never completes its head,
//! and `limits.idle_timeout` closes one on which nothing moves.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::reload::Effective;
use crate::{full_body, Body};

/// Whether the gateway takes traffic: false until start-up completes and again while draining.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Answers one admin request.
pub fn handle<B>(req: &Request<B>, metrics: &Metrics, ready: &Readiness) -> Response<Body> {
    let text = |status: StatusCode, body: &'static str| {
        let mut res = Response::new(full_body(body));
        *res.status_mut() = status;
        res.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        res
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if ready.get() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/metrics" => match metrics.render() {
            Ok(body) => {
                let mut res = Response::new(full_body(body));
                res.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                res
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot render metrics");
                text(StatusCode::INTERNAL_SERVER_ERROR, "cannot render metrics\n")
            }
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The admin service for the listener.
pub fn service(metrics: Metrics, ready: Readiness, config: Effective) -> Service {
    Service {
        metrics,
        ready,
        config,
    }
}

/// Answers admin requests on one connection.
#[derive(Clone)]
pub struct Service {
    metrics: Metrics,
    ready: Readiness,
    /// `GET /config`: the configuration in force, rendered at each load (`reload.rs`).
    config: Effective,
}

/// `GET /config`: the effective configuration as JSON, secrets masked.
fn config_response(config: &Effective) -> Response<Body> {
    let mut res = Response::new(full_body(config.json()));
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let get = req.method() == Method::GET || req.method() == Method::HEAD;
        if get && req.uri().path() == "/config" {
            return std::future::ready(Ok(config_response(&self.config)));
        }
        std::future::ready(Ok(handle(&req, &self.metrics, &self.ready)))
    }
}

/// What the admin listener enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Limits {
    pub fn new(config: &Config) -> Self {
        Limits {
            header_read_timeout: config.limits.header_read_timeout.0,
            idle_timeout: config.limits.idle_timeout.0,
        }
    }
}

/// How long an idle admin connection may take to close gracefully before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Serves one admin connection until it ends, or until `header_read_timeout` passes without a
/// first byte, or `idle_timeout` without a byte read or written. A partial head is cut by hyper's
/// header-read timer, which `builder` arms; that timer starts only at the first byte, hence the
/// `peek`.
pub async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    builder: &auto::Builder<TokioExecutor>,
    svc: Service,
    limits: Limits,
) {
    // `peek` reads nothing away; `readable` alone may be ready before any byte is.
    let mut first = [0u8; 1];
    if !matches!(
        tokio::time::timeout(limits.header_read_timeout, tcp.peek(&mut first)).await,
        Ok(Ok(1))
    ) {
        tracing::debug!(%peer, "admin: no byte within header_read_timeout");
        return;
    }
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(ActivityIo {
        inner: tcp,
        activity: activity.clone(),
    });
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let idle = limits.idle_timeout;
    let mut hard_close: Option<Instant> = None;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "admin connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep_until(activity.deadline(idle)), if hard_close.is_none() => {
                if activity.idle_for(idle) {
                    tracing::debug!(%peer, "admin: closing a connection idle for idle_timeout");
                    conn.as_mut().graceful_shutdown();
                    hard_close = Some(Instant::now() + idle.min(CLOSE_GRACE));
                }
            }
            _ = tokio::time::sleep_until(hard_close.unwrap_or_else(Instant::now)), if hard_close.is_some() => {
                return;
            }
        }
    }
}

/// When a byte last moved on a connection, in milliseconds since it was accepted.
struct Activity {
    origin: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// When the connection will have been idle for `timeout`, if nothing moves.
    fn deadline(&self, timeout: Duration) -> Instant {
        (self.last() + timeout).max(Instant::now() + Duration::from_millis(10))
    }

    fn idle_for(&self, timeout: Duration) -> bool {
        self.last().elapsed() >= timeout
    }
}

/// An admin connection's socket that notes when a byte was last read or written: admin
/// responses are in memory, so a connection with nothing moving is idle (or a client that does
/// not read), for HTTP/1.1 and h2c alike.
struct ActivityIo<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for ActivityIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let ready = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        ready
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ActivityIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let ready = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(ready, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        ready
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let ready = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(ready, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        ready
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Descriptors kept apart from connections: the listeners, the runtime's epoll and wakers,
/// stdio, files read at reload, introspection sockets.
pub const RESERVED_DESCRIPTORS: u64 = 64;

/// How many public client connections fit under an open-file limit of `nofile` once the admin
/// listener's cap and the fixed reserve are set apart, and the upstream connections those client
/// connections lead to: at most one per request in flight (`max_concurrent_requests`) plus the
/// idle pool, but never more than half of what is left. At least 1; at most
/// `limits.max_connections`.
pub fn public_connection_budget(nofile: u64, config: &Config) -> usize {
    let admin = config.admin.max_connections as u64;
    let left = nofile.saturating_sub(admin.saturating_add(RESERVED_DESCRIPTORS));
    let upstream = (config.limits.max_concurrent_requests as u64)
        .saturating_add(config.upstream.pool_max_idle_per_host as u64)
        .min(left / 2);
    let budget = usize::try_from(left - upstream).unwrap_or(usize::MAX);
    budget.clamp(1, config.limits.max_connections.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, m: &Metrics, r: &Readiness) -> StatusCode {
        let req = Request::get(path).body(()).unwrap();
        handle(&req, m, r).status()
    }

    #[test]
    fn the_admin_cap_and_the_upstream_side_are_set_apart_from_the_public_budget() {
        let c = Config::default();
        // Plenty: the configured cap stands.
        assert_eq!(public_connection_budget(1 << 20, &c), 10_000);
        // 65,536 (systemd's LimitNOFILE): 10,000 + 64 + 64 + 4,096 + 256 fit.
        assert_eq!(public_connection_budget(65_536, &c), 10_000);
        // The 2,048: 64 admin + 64 reserved, then half of the rest for the upstream side.
        assert_eq!(public_connection_budget(2_048, &c), 960);
        // The upstream side takes only what requests in flight and the idle pool can use.
        let mut small = c.clone();
        small.limits.max_concurrent_requests = 100;
        small.upstream.pool_max_idle_per_host = 20;
        assert_eq!(
            public_connection_budget(2_048, &small),
            2_048 - 64 - 64 - 120
        );
        // A larger admin cap comes out of the public budget, one for one.
        let mut admin = small.clone();
        admin.admin.max_connections = 164;
        assert_eq!(
            public_connection_budget(2_048, &admin),
            2_048 - 164 - 64 - 120
        );
        // Below the reserve, one connection rather than none or an underflow.
        assert_eq!(public_connection_budget(10, &c), 1);
        assert_eq!(public_connection_budget(0, &c), 1);
    }

    #[test]
    fn health_readiness_and_metrics() {
        let m = Metrics::new(&[1.0]).unwrap();
        let r = Readiness::default();
        assert_eq!(get("/healthz", &m, &r), 200);
        assert_eq!(get("/readyz", &m, &r), 503);
        r.set(true);
        assert_eq!(get("/readyz", &m, &r), 200);
        assert_eq!(get("/metrics", &m, &r), 200);
        assert_eq!(get("/nope", &m, &r), 404);
    }
}
