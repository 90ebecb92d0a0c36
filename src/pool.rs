//! The upstream connection pool, on hyper's own connection handles (`hyper::client::conn`).
//!
//! Idle HTTP/1 connections wait on a LIFO stack; a connection goes back on it the moment its
//! response body ends, from the request's own task. When ALPN picks h2, one multiplexed
//! connection is shared. It replaces hyper-util's legacy client on the request path, which per
//! request hashed a pool key, set `Host` by formatting the URI, boxed and raced a lazy connect,
//! and spawned a task to hand the connection back.
//!
//! How many idle connections are kept follows demand: a returned connection stays while fewer are
//! idle than `pool_max_idle_per_host` or than the most connections in use at once within the
//! last one or two reaper periods. Closing connections that the next burst needs again was the
//! churn of issue 14 (9,499 TLS connects per 100k requests at 2,000 concurrent streams); the open
//! connections never exceed that recent peak, and once demand falls the reaper trims the idle
//! ones back to `pool_max_idle_per_host`.
//!
//! Every connection carries the trust generation it was made under (`upstream.rs`); one from an
//! older generation is never reused: idle ones close when the trust changes, busy ones when their
//! response ends.
//!
//! Section 9: each connection belongs to one address (`endpoints.rs`); a request picks an
//! address, then reuses one of its idle connections or opens one. Open connections are capped at
//! `upstream.max_connections` (each holds a permit until its task ends) and at most
//! `CONNECTS_AT_ONCE` are being set up at a time; a request beyond the cap waits for a permit or
//! a returned connection, bounded by the forwarder's `request_timeout`. `send` runs the attempts
//! and retries where `retry.rs` allows; `Inner::attempt` is one attempt.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Parts, PathAndQuery};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pin_project_lite::pin_project;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::config::{UpstreamConfig, UpstreamTarget};
use crate::endpoints::{
    Endpoint, EndpointMetrics, Endpoints, InFlight, OutlierSettings, Resolve, Source,
};
use crate::metrics::MetricSet;
use crate::otel::{AttemptEnd, UpstreamSpans};
use crate::outcome::{UpstreamAddr, UpstreamErrorKind};
use crate::retry::{self, Failure, Replay, RetryBudget, RetryPolicy};
use crate::upstream::{ConnectError, Connector, SetupError, UpstreamTls};
use crate::Body;

/// Connections being set up at once, whatever the cap: a burst after an outage does not open
/// hundreds of TLS handshakes together.
const CONNECTS_AT_ONCE: usize = 32;

/// Sending a request upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// TCP or TLS could not be set up; the error names the address and the reason.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The connection failed while the request was sent or the response head read.
    #[error("upstream: {0}")]
    Send(#[source] hyper::Error),
}

impl PoolError {
    /// Sorts the error into its metric `kind` by its type, never by its message. A TLS alert on
    /// the first read after the handshake (a refused client certificate under TLS 1.3) is `tls`.
    pub fn kind(&self) -> UpstreamErrorKind {
        match self {
            PoolError::Connect(e) => e.kind(),
            PoolError::Send(e) if tls_failure(e) => UpstreamErrorKind::Tls,
            PoolError::Send(e) if e.is_timeout() => UpstreamErrorKind::Timeout,
            PoolError::Send(e) if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() => {
                UpstreamErrorKind::Protocol
            }
            PoolError::Send(_) => UpstreamErrorKind::Reset,
        }
    }
}

/// Whether rustls's own error is in the chain: an alert from the upstream, or a TLS failure.
fn tls_failure(e: &hyper::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
            {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// How long idle connections are kept, and how many.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub idle_timeout: Duration,
    /// Idle connections kept beyond recent demand.
    pub max_idle: usize,
    /// h2 is offered by ALPN: connects are serialised until the upstream has answered once.
    pub http2: bool,
    /// `upstream.max_connections`.
    pub max_connections: usize,
    /// `upstream.dns_refresh`.
    pub dns_refresh: Duration,
}

impl PoolSettings {
    /// How often the reaper runs; also the length of a demand window. A quarter of the idle
    /// timeout, so that trimming to `max_idle` happens well before idle connections time out.
    fn reaper_period(&self) -> Duration {
        (self.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// Builds the connection pool for `[upstream]`, and the handle that reloads its trust anchors.
/// The egress proxy comes from `upstream.proxy` or the process's `HTTPS_PROXY`/`NO_PROXY`.
pub(crate) fn build_pool(
    cfg: &UpstreamConfig,
    target: &UpstreamTarget,
    metrics: &MetricSet,
    resolver: Arc<dyn Resolve>,
) -> Result<(Pool, UpstreamTls), SetupError> {
    let host = target.authority.host();
    let proxy = crate::proxy::select(cfg.proxy.as_deref(), |k| std::env::var(k).ok(), host)
        .map_err(SetupError::Config)?;
    let source = address_source(cfg, target, proxy.as_ref(), resolver);
    if let Some(proxy) = &proxy {
        tracing::info!(%proxy, "upstream connections go through the egress proxy");
    }
    let (connector, reload) = Connector::new(
        cfg,
        &target.authority,
        proxy,
        metrics.upstream_connections_opened.clone(),
    )?;
    let settings = PoolSettings {
        idle_timeout: cfg.pool_idle_timeout.0,
        max_idle: cfg.pool_max_idle_per_host,
        http2: cfg.http2,
        max_connections: cfg.max_connections,
        dns_refresh: cfg.dns_refresh.0,
    };
    let endpoints = Endpoints::new(
        source,
        OutlierSettings {
            failures: cfg.outlier_failures,
            ejection: cfg.outlier_ejection.0,
        },
        EndpointMetrics {
            healthy: metrics.upstream_endpoints[0].clone(),
            ejected: metrics.upstream_endpoints[1].clone(),
            ejections: metrics.upstream_ejections.clone(),
        },
    );
    let retry = RetryPolicy {
        retries: cfg.retries,
        budget: RetryBudget::new(cfg.retry_budget),
        counted: metrics.upstream_retries.clone(),
        exhausted: metrics.upstream_retry_budget_exhausted.clone(),
    };
    let pool = Pool::new(connector, target, settings, endpoints, retry);
    Ok((pool, reload))
}

/// Where addresses come from: the proxy's host when there is a proxy (it resolves the
/// upstream's), else `upstream.resolve`, else the URL's host (an IP literal as it is).
fn address_source(
    cfg: &UpstreamConfig,
    target: &UpstreamTarget,
    proxy: Option<&crate::proxy::ProxyUrl>,
    resolver: Arc<dyn Resolve>,
) -> Source {
    let (host, port) = match proxy {
        Some(p) => (p.host.as_str(), p.port),
        None if !cfg.resolve.is_empty() => return Source::Configured(cfg.resolve.clone()),
        None => (
            target
                .authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']'),
            target.authority.port_u16().unwrap_or(443),
        ),
    };
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => Source::Fixed(vec![SocketAddr::new(ip, port)]),
        Err(_) => Source::Dns {
            host: Arc::from(host),
            port,
            resolver,
        },
    }
}

/// A cheap handle on the pool; every clone shares the same connections.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    connector: Connector,
    /// `https://authority`, for h2's `:authority`.
    origin: Uri,
    /// `Host` on HTTP/1, as hyper-util wrote it: the port only when it is not 443.
    host: HeaderValue,
    settings: PoolSettings,
    state: Mutex<State>,
    shared_h2: Mutex<Option<SharedH2>>,
    /// Held while a connection that may become the shared h2 one is set up.
    h2_connect: tokio::sync::Mutex<()>,
    /// ALPN picked HTTP/1 once: no h2 to wait for.
    h2_refused: AtomicBool,
    reaper_started: AtomicBool,
    endpoints: Endpoints,
    /// One permit per open connection, `max_connections` in all.
    open: Arc<Semaphore>,
    connecting: Semaphore,
    /// Requests waiting at the cap, and the signal that a connection came back idle.
    waiting: AtomicUsize,
    returned: Notify,
    retry: RetryPolicy,
}

struct SharedH2 {
    tx: http2::SendRequest<Body>,
    generation: u64,
}

/// The HTTP/1 connections: idle ones, and how many are in use now and were at most lately.
#[derive(Default)]
struct State {
    idle: Vec<Idle>,
    in_use: usize,
    /// The most in use at once in this reaper period, and in the one before.
    peak: usize,
    previous_peak: usize,
}

impl State {
    fn lease(&mut self) {
        self.in_use += 1;
        self.peak = self.peak.max(self.in_use);
    }

    /// How many idle connections to keep: what recent demand used, at least `max_idle`.
    fn idle_cap(&self, max_idle: usize) -> usize {
        max_idle.max(self.peak).max(self.previous_peak)
    }
}

struct Idle {
    tx: http1::SendRequest<Body>,
    since: Instant,
    generation: u64,
    ep: Arc<Endpoint>,
}

impl Idle {
    /// Not idle past `timeout`, made under the current trust, to an address still resolved,
    /// and not closed meanwhile.
    fn usable(&self, timeout: Duration, generation: u64) -> bool {
        self.generation == generation
            && !self.ep.removed()
            && self.since.elapsed() < timeout
            && !self.tx.is_closed()
    }
}

/// Whether a connection coming back from a finished response goes on the idle stack: the pure
/// decision of `checkin`. `reusable`: open, and its address still resolved.
fn keep_on_checkin(reusable: bool, generation: u64, current: u64, idle: usize, cap: usize) -> bool {
    reusable && generation == current && idle < cap
}

/// A failed attempt: the error, and the request when none of it was written.
struct AttemptError {
    error: PoolError,
    unsent: Option<Request<Body>>,
}

impl AttemptError {
    fn unsent(error: PoolError, req: Request<Body>) -> Self {
        AttemptError {
            error,
            unsent: Some(req),
        }
    }

    fn sent(error: PoolError) -> Self {
        AttemptError {
            error,
            unsent: None,
        }
    }
}

enum Conn {
    H1(Lease, http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

pub type SendFuture = Pin<Box<dyn Future<Output = Result<Response<PooledBody>, PoolError>> + Send>>;

impl Pool {
    pub(crate) fn new(
        connector: Connector,
        target: &UpstreamTarget,
        settings: PoolSettings,
        endpoints: Endpoints,
        retry: RetryPolicy,
    ) -> Self {
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
                state: Mutex::new(State::default()),
                shared_h2: Mutex::new(None),
                h2_connect: tokio::sync::Mutex::new(()),
                h2_refused: AtomicBool::new(false),
                reaper_started: AtomicBool::new(false),
                endpoints,
                open: Arc::new(Semaphore::new(settings.max_connections)),
                connecting: Semaphore::new(CONNECTS_AT_ONCE.min(settings.max_connections)),
                waiting: AtomicUsize::new(0),
                returned: Notify::new(),
                retry,
            }),
        }
    }

    /// Whether a reload may hand this pool a new `upstream.resolve` (`addrs`) rather than build
    /// another: its addresses are `upstream.resolve`'s, and the new list is not empty (empty
    /// means the URL's host is resolved: another source, another pool).
    pub(crate) fn takes_addresses(&self, addrs: &[SocketAddr]) -> bool {
        !addrs.is_empty() && self.inner.endpoints.configured()
    }

    /// A reload's new `upstream.resolve`: new addresses join, kept ones keep their connections
    /// and outlier state, vanished ones drain (idle connections close now, busy ones after their
    /// response), as after a DNS refresh.
    pub(crate) fn set_addresses(&self, addrs: &[SocketAddr]) {
        self.inner.endpoints.replace(addrs);
        self.inner.reap(false);
    }

    /// Whether a request may be sent more than once (`upstream.retries` > 0): only then is a
    /// streamed body worth collecting for replay.
    pub(crate) fn replays(&self) -> bool {
        self.inner.retry.retries > 0
    }

    /// Sends `req` (origin-form URI) on a pooled connection, or a new one, retrying where
    /// section 9 allows. `body`: the request's whole body when it is known (empty, the
    /// validated route's buffered one, or a small streamed one the forwarder collected), so that
    /// an idempotent request can be replayed. `spans`: the request's trace, one CLIENT span per
    /// attempt.
    pub(crate) fn send(
        &self,
        req: Request<Body>,
        body: Option<Bytes>,
        spans: Option<UpstreamSpans>,
    ) -> SendFuture {
        Box::pin(self.inner.clone().send(req, body, spans))
    }
}

/// The count of an HTTP/1 connection taken from the pool for one request; its handle travels
/// beside it. Dropped, the connection counts as gone (its handle is dropped, so closed);
/// `release` after a complete response offers the handle back.
struct Lease {
    pool: Weak<Inner>,
    generation: u64,
    ep: Arc<Endpoint>,
}

impl Lease {
    /// The response ended cleanly: the connection may serve the next request.
    fn release(mut self, tx: http1::SendRequest<Body>) {
        if let Some(pool) = std::mem::take(&mut self.pool).upgrade() {
            pool.checkin(Some(tx), self.generation, &self.ep);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.checkin(None, self.generation, &self.ep);
        }
    }
}

impl Inner {
    /// The attempts: one, and more where section 9 allows, each to an address not tried yet
    /// where there is one, after a jittered backoff, within the retry budget. The forwarder's
    /// timer bounds the whole (`request_timeout`).
    async fn send(
        self: Arc<Self>,
        req: Request<Body>,
        body: Option<Bytes>,
        spans: Option<UpstreamSpans>,
    ) -> Result<Response<PooledBody>, PoolError> {
        self.retry.budget.record_request();
        let list = self.endpoints.current().await.map_err(|source| {
            PoolError::Connect(ConnectError::Resolve {
                authority: self.connector.authority().clone(),
                source,
            })
        })?;
        let method = req.method().clone();
        // A copy only for a request that may be sent again after being written.
        let replay = if self.retry.retries > 0 {
            Replay::of(&req, body)
        } else {
            None
        };
        let mut req = req;
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut retries = 0;
        loop {
            let ep = self.endpoints.pick(&list, &tried);
            if let Some(spans) = &spans {
                spans.attempt(&mut req);
            }
            let (failure, unsent, last) = match self.attempt(&ep, req).await {
                Ok(mut res) => {
                    res.extensions_mut().insert(UpstreamAddr(ep.addr));
                    let status = res.status();
                    if is_outlier_status(status) {
                        self.endpoints.failure(&ep);
                    } else {
                        self.endpoints.success(&ep);
                    }
                    if status != StatusCode::BAD_GATEWAY
                        && status != StatusCode::SERVICE_UNAVAILABLE
                    {
                        return Ok(res);
                    }
                    (Failure::Unavailable, None, Ok(res))
                }
                Err(AttemptError { error, unsent }) => {
                    if matches!(
                        error.kind(),
                        UpstreamErrorKind::Connect | UpstreamErrorKind::Tls
                    ) {
                        self.endpoints.failure(&ep);
                    }
                    let failure = match (&unsent, error.kind()) {
                        (Some(_), _) => Failure::NotSent,
                        (None, UpstreamErrorKind::Reset | UpstreamErrorKind::Tls) => Failure::Reset,
                        (None, _) => Failure::Other,
                    };
                    (failure, unsent, Err(error))
                }
            };
            let Some(reason) = retry::decide(&method, failure, replay.is_some()) else {
                return last;
            };
            if retries >= self.retry.retries {
                return last;
            }
            if !self.retry.budget.try_retry() {
                self.retry.exhausted.inc();
                return last;
            }
            let next = match (unsent, &replay) {
                (Some(req), _) => req,
                (None, Some(replay)) => replay.request(),
                (None, None) => return last,
            };
            if let Some(spans) = &spans {
                spans.retrying(match &last {
                    Ok(res) => AttemptEnd::Answered(res.status()),
                    Err(e) => AttemptEnd::Failed(e.kind().as_str()),
                });
            }
            // The failed response (a 502/503) closes its connection when dropped.
            drop(last);
            self.retry.count(reason);
            retries += 1;
            tried.push(ep.addr);
            tokio::time::sleep(retry::backoff(retries, crate::endpoints::random())).await;
            req = next;
        }
    }

    /// One attempt: one address, one connection, one request, up to the response head (its
    /// CLIENT span started before by `send`). A pooled connection found closed before the
    /// request was written hands it back, and the next idle one is tried within the attempt.
    async fn attempt(
        self: &Arc<Self>,
        ep: &Arc<Endpoint>,
        mut req: Request<Body>,
    ) -> Result<Response<PooledBody>, AttemptError> {
        let in_flight = InFlight::new(ep);
        if let Some(tx) = self.h2() {
            return send_h2(tx, &self.origin, req, in_flight).await;
        }
        // The most recently used idle connection first; one closed meanwhile hands the
        // request back unsent, and the next one is tried.
        while let Some((lease, mut tx)) = self.checkout(Some(ep)) {
            if tx.ready().await.is_err() {
                continue;
            }
            self.set_host(&mut req);
            match tx.try_send_request(req).await {
                Ok(res) => return Ok(self.pooled(res, lease, tx, in_flight)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(AttemptError::sent(PoolError::Send(e.into_error()))),
                },
            }
        }
        // Boxed, so that the reuse path's future stays small.
        let conn = match Box::pin(self.connect(ep)).await {
            Ok(conn) => conn,
            Err(e) => return Err(AttemptError::unsent(e, req)),
        };
        match conn {
            Conn::H1(lease, mut tx) => {
                if let Err(e) = tx.ready().await {
                    return Err(AttemptError::unsent(PoolError::Send(e), req));
                }
                self.set_host(&mut req);
                match tx.try_send_request(req).await {
                    Ok(res) => Ok(self.pooled(res, lease, tx, in_flight)),
                    Err(mut e) => {
                        let unsent = e.take_message();
                        let error = PoolError::Send(e.into_error());
                        Err(AttemptError { error, unsent })
                    }
                }
            }
            Conn::H2(tx) => send_h2(tx, &self.origin, req, in_flight).await,
        }
    }

    fn set_host(&self, req: &mut Request<Body>) {
        req.headers_mut().insert(HOST, self.host.clone());
    }

    fn state(&self) -> Option<MutexGuard<'_, State>> {
        self.state.lock().ok()
    }

    fn h2(&self) -> Option<http2::SendRequest<Body>> {
        if !self.settings.http2 {
            return None;
        }
        let generation = self.connector.generation();
        let mut shared = self.shared_h2.lock().ok()?;
        match shared.as_ref() {
            Some(h2) if h2.generation == generation && !h2.tx.is_closed() => Some(h2.tx.clone()),
            // Closed, or made under old trust: new requests go elsewhere; streams in flight on
            // it finish, and it closes when the last one does.
            Some(_) => {
                *shared = None;
                None
            }
            None => None,
        }
    }

    /// The most recently returned usable idle connection to `ep` (to any address when `ep` is
    /// `None`: at the cap, a connection elsewhere beats waiting). Unusable ones met on the way
    /// are dropped (closed) after the lock.
    fn checkout(
        self: &Arc<Self>,
        ep: Option<&Arc<Endpoint>>,
    ) -> Option<(Lease, http1::SendRequest<Body>)> {
        let generation = self.connector.generation();
        let mut stale = Vec::new();
        let found = {
            let mut state = self.state()?;
            let mut i = state.idle.len();
            let mut found = None;
            while i > 0 {
                i -= 1;
                if ep.is_some_and(|ep| !Arc::ptr_eq(ep, &state.idle[i].ep)) {
                    continue;
                }
                let entry = state.idle.remove(i);
                if entry.usable(self.settings.idle_timeout, generation) {
                    state.lease();
                    found = Some(entry);
                    break;
                }
                stale.push(entry);
            }
            found
        };
        drop(stale);
        let entry = found?;
        let lease = Lease {
            pool: Arc::downgrade(self),
            generation: entry.generation,
            ep: entry.ep,
        };
        Some((lease, entry.tx))
    }

    /// A connection comes back (`tx`), or one leased is gone (`None`). Closing happens by
    /// dropping `tx`, outside the lock.
    fn checkin(&self, tx: Option<http1::SendRequest<Body>>, generation: u64, ep: &Arc<Endpoint>) {
        let current = self.connector.generation();
        let Some(mut state) = self.state() else {
            return;
        };
        state.in_use = state.in_use.saturating_sub(1);
        let Some(tx) = tx else { return };
        let cap = state.idle_cap(self.settings.max_idle);
        let reusable = !tx.is_closed() && !ep.removed();
        if keep_on_checkin(reusable, generation, current, state.idle.len(), cap) {
            state.idle.push(Idle {
                tx,
                since: Instant::now(),
                generation,
                ep: ep.clone(),
            });
            drop(state);
            if self.waiting.load(Ordering::Acquire) != 0 {
                self.returned.notify_one();
            }
        } else {
            drop(state);
            drop(tx);
        }
    }

    /// Closes idle connections past `idle_timeout` or made under old trust, forgets closed ones,
    /// and, when `rotate`, starts a new demand window and trims the idle ones (the least recently
    /// used first) to what the last two windows needed, at least `max_idle`.
    fn reap(&self, rotate: bool) {
        let generation = self.connector.generation();
        let closed: Vec<Idle> = {
            let Some(mut state) = self.state() else {
                return;
            };
            let timeout = self.settings.idle_timeout;
            let (keep, mut closed): (Vec<Idle>, Vec<Idle>) = std::mem::take(&mut state.idle)
                .into_iter()
                .partition(|entry| entry.usable(timeout, generation));
            state.idle = keep;
            if rotate {
                state.previous_peak = state.peak;
                state.peak = state.in_use;
                let cap = state.idle_cap(self.settings.max_idle);
                if state.idle.len() > cap {
                    let excess = state.idle.len() - cap;
                    closed.extend(state.idle.drain(..excess));
                }
            }
            closed
        };
        drop(closed);
    }

    fn pooled(
        self: &Arc<Self>,
        res: Response<Incoming>,
        lease: Lease,
        tx: http1::SendRequest<Body>,
        in_flight: InFlight,
    ) -> Response<PooledBody> {
        let (parts, body) = res.into_parts();
        let mut body = PooledBody {
            inner: body,
            checkin: Some(Checkin { lease, tx }),
            _in_flight: in_flight,
        };
        if body.inner.is_end_stream() {
            give_back(&mut body.checkin);
        }
        Response::from_parts(parts, body)
    }

    /// A permit for one more open connection, or, at the cap, an idle connection to any
    /// address; else waits for either.
    async fn capacity(self: &Arc<Self>) -> Result<OwnedSemaphorePermit, Conn> {
        if let Ok(permit) = self.open.clone().try_acquire_owned() {
            return Ok(permit);
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        loop {
            let returned = self.returned.notified();
            tokio::pin!(returned);
            // Registered before looking, so that a connection returned meanwhile wakes it.
            returned.as_mut().enable();
            if let Some((lease, tx)) = self.checkout(None) {
                return Err(Conn::H1(lease, tx));
            }
            tokio::select! {
                permit = self.open.clone().acquire_owned() => {
                    if let Ok(permit) = permit {
                        return Ok(permit);
                    }
                }
                () = &mut returned => {}
            }
        }
    }

    async fn connect(self: &Arc<Self>, ep: &Arc<Endpoint>) -> Result<Conn, PoolError> {
        self.start_reaper();
        let permit = match self.capacity().await {
            Ok(permit) => permit,
            Err(reused) => return Ok(reused),
        };
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
        let connected = {
            let _connecting = self.connecting.acquire().await;
            self.connector.connect(ep.addr).await?
        };
        let generation = connected.generation;
        if connected.h2 {
            let (tx, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(connected.io)
                .await
                .map_err(PoolError::Send)?;
            drive(conn, "h2", permit);
            if let Ok(mut shared) = self.shared_h2.lock() {
                *shared = Some(SharedH2 {
                    tx: tx.clone(),
                    generation,
                });
            }
            Ok(Conn::H2(tx))
        } else {
            self.h2_refused.store(true, Ordering::Relaxed);
            let (tx, conn) = http1::Builder::new()
                .handshake(connected.io)
                .await
                .map_err(PoolError::Send)?;
            drive(conn, "http/1.1", permit);
            if let Some(mut state) = self.state() {
                state.lease();
            }
            let lease = Lease {
                pool: Arc::downgrade(self),
                generation,
                ep: ep.clone(),
            };
            Ok(Conn::H1(lease, tx))
        }
    }

    /// One task per pool closes connections left idle past `idle_timeout` and, at once, those
    /// made under trust anchors that were replaced; it ends with the pool.
    fn start_reaper(self: &Arc<Self>) {
        if self.reaper_started.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool = Arc::downgrade(self);
        let period = self.settings.reaper_period();
        let mut trust_changed = self.connector.subscribe();
        let refresh_pool = pool.clone();
        let refresh = self.settings.dns_refresh;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + refresh, refresh);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = refresh_pool.upgrade() else {
                    return;
                };
                if let Err(e) = pool.endpoints.refresh().await {
                    tracing::warn!(error = %e, "upstream re-resolution failed; keeping the addresses in use");
                }
                // Connections to vanished addresses close now when idle, after their response
                // when busy.
                pool.reap(false);
            }
        });
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut watching = true;
            loop {
                let rotate = tokio::select! {
                    _ = tick.tick() => true,
                    changed = trust_changed.changed(), if watching => {
                        // The sender lives as long as the pool's connector; gone, only ticks.
                        watching = changed.is_ok();
                        false
                    }
                };
                match pool.upgrade() {
                    Some(pool) => {
                        if !rotate {
                            pool.h2();
                        }
                        pool.reap(rotate)
                    }
                    None => return,
                }
            }
        });
    }
}

/// Runs a connection's task until the connection ends; how it ended is only worth a debug line.
/// The connection's permit (`max_connections`) is held until then.
fn drive<C>(conn: C, protocol: &'static str, permit: OwnedSemaphorePermit)
where
    C: Future<Output = hyper::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, protocol, "upstream connection ended");
        }
        drop(permit);
    });
}

/// Counts a request waiting at the cap while it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// 502, 503 and 504 count against an address for outlier ejection.
fn is_outlier_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 502..=504)
}

/// h2 takes the authority from the URI (`:authority`); a `host` header as well makes some
/// upstreams refuse the request.
async fn send_h2(
    mut tx: http2::SendRequest<Body>,
    origin: &Uri,
    mut req: Request<Body>,
    in_flight: InFlight,
) -> Result<Response<PooledBody>, AttemptError> {
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
    if let Err(e) = tx.ready().await {
        return Err(AttemptError::unsent(PoolError::Send(e), req));
    }
    let res = match tx.try_send_request(req).await {
        Ok(res) => res,
        Err(mut e) => {
            let unsent = e.take_message();
            let error = PoolError::Send(e.into_error());
            return Err(AttemptError { error, unsent });
        }
    };
    let (parts, body) = res.into_parts();
    Ok(Response::from_parts(
        parts,
        PooledBody {
            inner: body,
            checkin: None,
            _in_flight: in_flight,
        },
    ))
}

/// A leased connection and its handle, riding on the response body.
struct Checkin {
    lease: Lease,
    tx: http1::SendRequest<Body>,
}

pin_project! {
    /// An upstream response body that hands its HTTP/1 connection back to the pool once it ends.
    /// Dropped before its end, the connection is closed instead.
    pub struct PooledBody {
        #[pin]
        inner: Incoming,
        checkin: Option<Checkin>,
        // The request counts as in flight on its address until its body is dropped.
        _in_flight: InFlight,
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
    if let Some(Checkin { lease, tx }) = checkin.take() {
        lease.release(tx);
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
            // A broken body leaves the connection unusable: closed, not returned.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_connection_is_kept_while_recent_demand_needs_it() {
        let mut state = State::default();
        for _ in 0..12 {
            state.lease();
        }
        // Twelve in use at once, max_idle 2: all twelve may wait for the next burst.
        let cap = state.idle_cap(2);
        assert_eq!(cap, 12);
        assert!(keep_on_checkin(true, 0, 0, 11, cap));
        assert!(!keep_on_checkin(true, 0, 0, 12, cap));
        // Two quiet windows later, the cap is max_idle again.
        state.in_use = 0;
        for _ in 0..2 {
            state.previous_peak = state.peak;
            state.peak = state.in_use;
        }
        assert_eq!(state.idle_cap(2), 2);
    }

    #[test]
    fn a_connection_made_under_old_trust_or_closed_is_never_kept() {
        assert!(!keep_on_checkin(true, 0, 1, 0, 10));
        assert!(!keep_on_checkin(false, 1, 1, 0, 10));
        assert!(keep_on_checkin(true, 1, 1, 0, 10));
    }
}
