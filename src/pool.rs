//! The upstream connection pool, on hyper's own connection handles (`hyper::client::conn`).
//!
//! Idle HTTP/1 connections wait on a LIFO stack; a connection goes back on it the moment its
//! response body ends, from the request's own task. When ALPN picks h2, one multiplexed
//! connection is shared. It replaces hyper-util's legacy client on the request path, which per
//! request hashed a pool key, set `Host` by formatting the URI, boxed and raced a lazy connect,
//! and spawned a task to hand the connection back.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Parts, PathAndQuery};
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::client::legacy::connect::Connection as _;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pin_project_lite::pin_project;
use tower::Service;

use crate::config::UpstreamTarget;
use crate::outcome::UpstreamErrorKind;
use crate::upstream::{ConnectTimeout, Connector, TcpConnectError};
use crate::{Body, BoxError};

/// Sending a request upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// TCP or TLS could not be set up.
    #[error("connect: {0}")]
    Connect(#[source] BoxError),
    /// The connection failed while the request was sent or the response head read.
    #[error("upstream: {0}")]
    Send(#[source] hyper::Error),
}

impl PoolError {
    /// Sorts the error into its metric `kind` by its type, never by its message.
    pub fn kind(&self) -> UpstreamErrorKind {
        match self {
            PoolError::Connect(e) => {
                let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
                while let Some(e) = source {
                    if e.is::<ConnectTimeout>() {
                        return UpstreamErrorKind::Timeout;
                    }
                    if e.is::<TcpConnectError>() {
                        return UpstreamErrorKind::Connect;
                    }
                    source = e.source();
                }
                // Neither the TCP connect nor the timeout: the TLS handshake.
                UpstreamErrorKind::Tls
            }
            PoolError::Send(e) if e.is_timeout() => UpstreamErrorKind::Timeout,
            PoolError::Send(e) if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() => {
                UpstreamErrorKind::Protocol
            }
            PoolError::Send(_) => UpstreamErrorKind::Reset,
        }
    }
}

/// How long idle connections are kept, and how many.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub idle_timeout: Duration,
    pub max_idle: usize,
    /// h2 is offered by ALPN: connects are serialised until the upstream has answered once.
    pub http2: bool,
}

/// A cheap handle on the pool; every clone shares the same connections.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    connector: Connector,
    /// `https://authority`, for the connector and for h2's `:authority`.
    origin: Uri,
    /// `Host` on HTTP/1, as hyper-util wrote it: the port only when it is not 443.
    host: HeaderValue,
    settings: PoolSettings,
    idle: Mutex<Vec<Idle>>,
    shared_h2: Mutex<Option<http2::SendRequest<Body>>>,
    /// Held while a connection that may become the shared h2 one is set up.
    h2_connect: tokio::sync::Mutex<()>,
    /// ALPN picked HTTP/1 once: no h2 to wait for.
    h2_refused: AtomicBool,
    reaper_started: AtomicBool,
}

struct Idle {
    tx: http1::SendRequest<Body>,
    since: Instant,
}

impl Idle {
    /// Not idle past `timeout`, and not closed by the upstream meanwhile.
    fn usable(&self, timeout: Duration) -> bool {
        self.since.elapsed() < timeout && !self.tx.is_closed()
    }
}

enum Conn {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

pub type SendFuture = Pin<Box<dyn Future<Output = Result<Response<PooledBody>, PoolError>> + Send>>;

impl Pool {
    pub fn new(connector: Connector, target: &UpstreamTarget, settings: PoolSettings) -> Self {
        let origin = Uri::builder()
            .scheme(target.scheme.clone())
            .authority(target.authority.clone())
            .path_and_query("/")
            .build()
            .unwrap_or_default();
        let host = match target.authority.port_u16() {
            Some(port) if port != 443 => format!("{}:{port}", target.authority.host()),
            _ => target.authority.host().to_owned(),
        };
        let host = HeaderValue::from_str(&host).unwrap_or_else(|_| HeaderValue::from_static(""));
        Pool {
            inner: Arc::new(Inner {
                connector,
                origin,
                host,
                settings,
                idle: Mutex::new(Vec::new()),
                shared_h2: Mutex::new(None),
                h2_connect: tokio::sync::Mutex::new(()),
                h2_refused: AtomicBool::new(false),
                reaper_started: AtomicBool::new(false),
            }),
        }
    }

    /// Sends `req` (origin-form URI) on a pooled connection, or a new one.
    pub fn send(&self, req: Request<Body>) -> SendFuture {
        Box::pin(self.inner.clone().send(req))
    }
}

impl Inner {
    async fn send(
        self: Arc<Self>,
        mut req: Request<Body>,
    ) -> Result<Response<PooledBody>, PoolError> {
        if let Some(tx) = self.h2() {
            return send_h2(tx, &self.origin, req).await;
        }
        // The most recently used idle connection first; one closed meanwhile hands the
        // request back unsent, and the next one is tried.
        while let Some(mut tx) = self.checkout() {
            if tx.ready().await.is_err() {
                continue;
            }
            self.set_host(&mut req);
            match tx.try_send_request(req).await {
                Ok(res) => return Ok(self.pooled(res, tx)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(PoolError::Send(e.into_error())),
                },
            }
        }
        // Boxed, so that the reuse path's future stays small.
        match Box::pin(self.connect()).await? {
            Conn::H1(mut tx) => {
                tx.ready().await.map_err(PoolError::Send)?;
                self.set_host(&mut req);
                let res = tx.send_request(req).await.map_err(PoolError::Send)?;
                Ok(self.pooled(res, tx))
            }
            Conn::H2(tx) => send_h2(tx, &self.origin, req).await,
        }
    }

    fn set_host(&self, req: &mut Request<Body>) {
        req.headers_mut().insert(HOST, self.host.clone());
    }

    fn h2(&self) -> Option<http2::SendRequest<Body>> {
        if !self.settings.http2 {
            return None;
        }
        let mut shared = self.shared_h2.lock().ok()?;
        match shared.as_ref() {
            Some(tx) if !tx.is_closed() => Some(tx.clone()),
            Some(_) => {
                *shared = None;
                None
            }
            None => None,
        }
    }

    fn checkout(&self) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(entry) = idle.pop() {
            if entry.usable(self.settings.idle_timeout) {
                return Some(entry.tx);
            }
        }
        None
    }

    fn checkin(&self, tx: http1::SendRequest<Body>) {
        if tx.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.settings.max_idle {
                idle.push(Idle {
                    tx,
                    since: Instant::now(),
                });
            }
        }
    }

    /// Closes idle connections past `idle_timeout`, and forgets closed ones.
    fn reap(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain(|entry| entry.usable(self.settings.idle_timeout));
        }
    }

    fn pooled(
        self: &Arc<Self>,
        res: Response<Incoming>,
        tx: http1::SendRequest<Body>,
    ) -> Response<PooledBody> {
        let (parts, body) = res.into_parts();
        let mut body = PooledBody {
            inner: body,
            checkin: Some(Checkin {
                pool: Arc::downgrade(self),
                tx,
            }),
        };
        if body.inner.is_end_stream() {
            give_back(&mut body.checkin);
        }
        Response::from_parts(parts, body)
    }

    async fn connect(self: &Arc<Self>) -> Result<Conn, PoolError> {
        self.start_reaper();
        // Until the upstream has answered ALPN once, one connect at a time: with h2, the
        // first connection serves everyone.
        let _guard = if self.settings.http2 && !self.h2_refused.load(Ordering::Relaxed) {
            let guard = self.h2_connect.lock().await;
            if let Some(tx) = self.h2() {
                return Ok(Conn::H2(tx));
            }
            Some(guard)
        } else {
            None
        };
        let io = self
            .connector
            .clone()
            .call(self.origin.clone())
            .await
            .map_err(PoolError::Connect)?;
        if io.connected().is_negotiated_h2() {
            let (tx, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(PoolError::Send)?;
            drive(conn, "h2");
            if let Ok(mut shared) = self.shared_h2.lock() {
                *shared = Some(tx.clone());
            }
            Ok(Conn::H2(tx))
        } else {
            self.h2_refused.store(true, Ordering::Relaxed);
            let (tx, conn) = http1::Builder::new()
                .handshake(io)
                .await
                .map_err(PoolError::Send)?;
            drive(conn, "http/1.1");
            Ok(Conn::H1(tx))
        }
    }

    /// One task per pool closes connections left idle past `idle_timeout`; it ends with the pool.
    fn start_reaper(self: &Arc<Self>) {
        if self.reaper_started.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool = Arc::downgrade(self);
        let period = self
            .settings
            .idle_timeout
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match pool.upgrade() {
                    Some(pool) => pool.reap(),
                    None => return,
                }
            }
        });
    }
}

/// Runs a connection's task until the connection ends; how it ended is only worth a debug line.
fn drive<C>(conn: C, protocol: &'static str)
where
    C: Future<Output = hyper::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, protocol, "upstream connection ended");
        }
    });
}

/// h2 takes the authority from the URI (`:authority`); a `host` header as well makes some
/// upstreams refuse the request.
async fn send_h2(
    mut tx: http2::SendRequest<Body>,
    origin: &Uri,
    mut req: Request<Body>,
) -> Result<Response<PooledBody>, PoolError> {
    let mut parts = Parts::default();
    parts.scheme = origin.scheme().cloned();
    parts.authority = origin.authority().cloned();
    parts.path_and_query = Some(
        req.uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    req.headers_mut().remove(HOST);
    tx.ready().await.map_err(PoolError::Send)?;
    let res = tx.send_request(req).await.map_err(PoolError::Send)?;
    let (parts, body) = res.into_parts();
    Ok(Response::from_parts(
        parts,
        PooledBody {
            inner: body,
            checkin: None,
        },
    ))
}

struct Checkin {
    pool: Weak<Inner>,
    tx: http1::SendRequest<Body>,
}

pin_project! {
    /// An upstream response body that hands its HTTP/1 connection back to the pool once it ends.
    /// Dropped before its end, the connection is closed instead.
    pub struct PooledBody {
        #[pin]
        inner: Incoming,
        checkin: Option<Checkin>,
    }

    impl PinnedDrop for PooledBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if this.inner.is_end_stream() {
                give_back(this.checkin);
            }
        }
    }
}

fn give_back(checkin: &mut Option<Checkin>) {
    if let Some(Checkin { pool, tx }) = checkin.take() {
        if let Some(pool) = pool.upgrade() {
            pool.checkin(tx);
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            None => give_back(this.checkin),
            Some(Ok(_)) if this.inner.is_end_stream() => give_back(this.checkin),
            Some(Ok(_)) => {}
            // A broken body leaves the connection unusable.
            Some(Err(_)) => {
                this.checkin.take();
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
