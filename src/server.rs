//! The listeners, the accept loops and the process lifecycle: start, serve, drain, stop.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::rt::{Read, Write};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use crate::admin::{self, Readiness};
use crate::config::{Config, LimitsConfig};
use crate::headers::ConnInfo;
use crate::metrics::Metrics;
use crate::reload::{Applied, Apply, ReloadError, Reloaded, Reloader};
use crate::shed_client::{self, ClientTable, CloseCounter};
use crate::stack::{self, Built, Carried, Options};
use crate::tls::{self, CertError, ReloadableCert};
use crate::upstream::SetupError;
use crate::{box_body, Body, BoxError};

use arc_swap::ArcSwap;
use std::sync::Mutex;
use tokio::sync::OwnedSemaphorePermit;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(#[from] SetupError),
    #[error("{0}")]
    Cert(#[from] CertError),
    #[error("listener TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
}

/// A started gateway.
pub struct Running {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics: Metrics,
    pub readiness: Readiness,
    reloader: Reloader,
    stop: watch::Sender<bool>,
    public: JoinHandle<()>,
    admin: JoinHandle<()>,
}

impl Running {
    /// Drains: not ready, wait `drain_delay`, stop accepting, let in-flight requests finish for up
    /// to `drain_timeout`, then stop the admin listener.
    pub async fn shutdown(self) {
        self.readiness.set(false);
        tokio::time::sleep(self.reloader.running().shutdown.drain_delay.0).await;
        let _ = self.stop.send(true);
        // The public loop closes its listener, then waits up to `drain_timeout` for connections.
        let _ = self.public.await;
        self.admin.abort();
    }

    /// Reloads now, as SIGHUP does: the config file again (`Options::config_path`; without one,
    /// the same configuration) and every file it names. On error nothing changed.
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        self.reloader.reload()
    }

    /// Reloads with `config` (validated first), as if the config file now held it.
    pub fn reload_with(&self, config: Config) -> Result<Reloaded, ReloadError> {
        self.reloader.reload_with(Some(config))
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.reloader.running()
    }
}

/// Builds the stack, binds both listeners and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    start_with(config, Options::default()).await
}

/// `start`, with test hooks.
pub async fn start_with(config: Config, options: Options) -> Result<Running, StartError> {
    start_inner(config, options, None).await
}

/// `start_with`; `nofile`: the open-file limit that `limits.max_connections` is fitted to again at
/// each reload, as `run` fitted it at start-up.
async fn start_inner(
    config: Config,
    options: Options,
    nofile: Option<u64>,
) -> Result<Running, StartError> {
    // The only provider in the graph; installing it explicitly keeps rustls from guessing.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = Metrics::new(&config.metrics.buckets)?;
    let built = stack::build_with(&config, &metrics, &options, None)?;
    set_upstream_client_expiry(&metrics, &built.carried.upstream_tls);
    let closed = Arc::new(CloseCounter::default());
    let started = Instant::now();
    let serving = Serving::new(&config, metrics.clone(), closed.clone(), started)?;
    let tls = serving.acceptor.is_some();
    let serving = Arc::new(ArcSwap::from_pointee(serving));
    let caps = Caps {
        public: Cap::new(config.limits.max_connections),
        per_client: ClientTable::new(config.limits.max_connections_per_client),
        admin: Cap::new(config.admin.max_connections),
    };
    let admin_settings = Arc::new(ArcSwap::from_pointee(AdminSettings::new(&config)));
    let readiness = Readiness::default();
    let (stop, stop_rx) = watch::channel(false);

    let bind = |what, addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { what, addr, source })
    };
    let public_listener = bind("listener.addr", config.listener.addr).await?;
    let admin_listener = bind("admin.addr", config.admin.addr).await?;
    let public_addr = public_listener.local_addr().map_err(StartError::Runtime)?;
    let admin_addr = admin_listener.local_addr().map_err(StartError::Runtime)?;

    let live = Arc::new(ArcSwap::from_pointee(built.service));
    let build = {
        let metrics = metrics.clone();
        let options = options.clone();
        move |config: &Config, previous: Option<&Carried>| {
            stack::build_with(config, &metrics, &options, previous)
        }
    };
    let swapper = Swapper {
        build,
        stack: live.clone(),
        carried: Mutex::new(built.carried),
        serving: serving.clone(),
        caps: caps.clone(),
        admin: admin_settings.clone(),
        metrics: metrics.clone(),
        closed,
        started,
        nofile,
        log_level: options.log_level.clone(),
    };
    let reloader = Reloader::new(
        options.config_path.clone(),
        config,
        Box::new(swapper),
        metrics.clone(),
    );
    let public = tokio::spawn(serve_public(
        serving,
        caps.clone(),
        public_listener,
        Swap(live),
        stop_rx.clone(),
    ));
    // Ready before the admin listener serves: a probe that connects as soon as the port is bound
    // must not see 503.
    readiness.set(true);
    let admin = tokio::spawn(serve_admin(
        admin_listener,
        admin::service(metrics.clone(), readiness.clone(), reloader.effective()),
        admin_settings,
        caps.admin.clone(),
    ));
    tokio::spawn(reloader.clone().watch(options.reload_poll, stop_rx));
    tracing::info!(%public_addr, %admin_addr, tls, "companies-gateway listening");
    Ok(Running {
        public_addr,
        admin_addr,
        metrics,
        readiness,
        reloader,
        stop,
        public,
        admin,
    })
}

/// The stack in force, swapped whole by a reload: each request takes the one in force when it
/// arrives and keeps it to its end.
struct Swap<S>(Arc<ArcSwap<S>>);

impl<S> Clone for Swap<S> {
    fn clone(&self) -> Self {
        Swap(self.0.clone())
    }
}

impl<S> Service<Request<Body>> for Swap<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = tower::util::Oneshot<S, Request<Body>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        S::clone(&self.0.load()).oneshot(req)
    }
}

/// A connection cap whose size a reload can change: growing it frees slots at once, shrinking it
/// takes free slots at once and the rest as connections close.
struct Cap {
    slots: Arc<Semaphore>,
    size: Mutex<usize>,
}

impl Cap {
    fn new(size: usize) -> Arc<Cap> {
        Arc::new(Cap {
            slots: Arc::new(Semaphore::new(size)),
            size: Mutex::new(size),
        })
    }

    async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().acquire_owned().await.ok()
    }

    fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    fn resize(&self, size: usize) {
        let mut current = self.size.lock().unwrap_or_else(|p| p.into_inner());
        if size > *current {
            self.slots.add_permits(size - *current);
        } else if size < *current {
            let excess = *current - size;
            let rest = excess - self.slots.forget_permits(excess);
            if rest > 0 {
                let slots = self.slots.clone();
                let rest = u32::try_from(rest).unwrap_or(u32::MAX);
                tokio::spawn(async move {
                    if let Ok(taken) = slots.acquire_many_owned(rest).await {
                        taken.forget();
                    }
                });
            }
        }
        *current = size;
    }

    /// Every slot back: every connection closed.
    async fn all_back(&self) {
        let size = *self.size.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self
            .slots
            .acquire_many(u32::try_from(size).unwrap_or(u32::MAX))
            .await;
    }
}

/// The connection caps, kept across reloads (the connections they count outlive a stack).
#[derive(Clone)]
struct Caps {
    public: Arc<Cap>,
    per_client: Arc<ClientTable>,
    admin: Arc<Cap>,
}

/// What the admin listener reads per connection.
struct AdminSettings {
    limits: admin::Limits,
    builder: Arc<auto::Builder<TokioExecutor>>,
}

impl AdminSettings {
    fn new(config: &Config) -> Self {
        AdminSettings {
            limits: admin::Limits::new(config),
            builder: Arc::new(http_builder(&config.limits)),
        }
    }
}

/// Builds everything for a new configuration and swaps it in (`reload::Apply`). `build` is
/// `stack::build_with`, taken as a closure so that `S` is the stack's one concrete type.
struct Swapper<S, F> {
    build: F,
    stack: Arc<ArcSwap<S>>,
    carried: Mutex<Carried>,
    serving: Arc<ArcSwap<Serving>>,
    caps: Caps,
    admin: Arc<ArcSwap<AdminSettings>>,
    metrics: Metrics,
    closed: Arc<CloseCounter>,
    started: Instant,
    nofile: Option<u64>,
    /// Sets the process's log filter from the new `[log]` (`main`'s subscriber); `None` in tests.
    log_level: Option<crate::telemetry::LevelHandle>,
}

impl<S, F> Apply for Swapper<S, F>
where
    S: Send + Sync,
    F: Fn(&Config, Option<&Carried>) -> Result<Built<S>, SetupError> + Send + Sync,
{
    fn apply(&self, config: &mut Config) -> Result<Applied, StartError> {
        if let Some(nofile) = self.nofile {
            fit_to_nofile(config, nofile);
        }
        let mut carried = self.carried.lock().unwrap_or_else(|p| p.into_inner());
        // Everything is built before anything is swapped: an error leaves all as it was.
        let serving = Serving::new(
            config,
            self.metrics.clone(),
            self.closed.clone(),
            self.started,
        )?;
        let Built {
            service,
            carried: next,
            handover,
        } = (self.build)(config, Some(&carried))?;
        self.stack.store(Arc::new(service));
        self.serving.store(Arc::new(serving));
        self.admin.store(Arc::new(AdminSettings::new(config)));
        self.caps.public.resize(config.limits.max_connections);
        self.caps
            .per_client
            .set_cap(config.limits.max_connections_per_client);
        self.caps.admin.resize(config.admin.max_connections);
        let session_cache_cleared = handover.cache_cleared.clone();
        let upstream_trust_changed = handover.commit(&next);
        set_upstream_client_expiry(&self.metrics, &next.upstream_tls);
        if let Some(set_level) = &self.log_level {
            // Validated with the rest; a failure here leaves the old level and says so.
            if let Err(e) = set_level(&config.log) {
                tracing::warn!(error = %e, "log.level not changed");
            }
        }
        *carried = next;
        Ok(Applied {
            upstream_trust_changed,
            session_cache_cleared,
        })
    }
}

/// `gateway_certificate_expiry_timestamp_seconds{certificate="upstream_client"}`, from the
/// client certificate in force (no series without one).
fn set_upstream_client_expiry(metrics: &Metrics, tls: &crate::upstream::UpstreamTls) {
    match tls.client_cert_expiry() {
        Some(t) => metrics
            .certificate_expiry
            .with_label_values(&["upstream_client"])
            .set(t),
        None => {
            let _ = metrics
                .certificate_expiry
                .remove_label_values(&["upstream_client"]);
        }
    }
}

/// Lowers `limits.max_connections` to what the open-file limit leaves: the admin cap and the
/// upstream side are set apart, so that the public accept loop pauses at its cap instead of
/// running out of descriptors.
fn fit_to_nofile(config: &mut Config, nofile: u64) {
    let budget = admin::public_connection_budget(nofile, config);
    if budget < config.limits.max_connections {
        tracing::warn!(
            nofile,
            configured = config.limits.max_connections,
            effective = budget,
            admin_max_connections = config.admin.max_connections,
            "limits.max_connections lowered to fit the open-file limit"
        );
        config.limits.max_connections = budget;
    }
}

/// Runs the gateway until SIGTERM or SIGINT, then drains. Builds its own runtime from `[runtime]`.
/// `config` was read from `path`: a reload reads it again.
pub fn run(
    mut config: Config,
    path: &std::path::Path,
    log_level: Option<crate::telemetry::LevelHandle>,
) -> Result<(), StartError> {
    let nofile = raise_nofile_limit();
    if let Some(nofile) = nofile {
        fit_to_nofile(&mut config, nofile);
    }
    // One worker: a current-thread runtime, without the work-stealing machinery.
    let mut rt = match config.runtime.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 0 {
                b.worker_threads(n);
            }
            b
        }
    };
    let rt = rt.enable_all().build().map_err(StartError::Runtime)?;
    rt.block_on(async move {
        let options = Options {
            config_path: Some(path.to_path_buf()),
            log_level,
            ..Options::default()
        };
        let running = start_inner(config, options, nofile).await?;
        shutdown_signal().await;
        tracing::info!("shutdown signal received; draining");
        running.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Raises the open-file soft limit to the hard limit: every connection is a descriptor. Returns
/// the soft limit in force, when there is one.
fn raise_nofile_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, setrlimit, Resource};
        let mut limit = getrlimit(Resource::Nofile);
        if limit.current < limit.maximum {
            let before = limit.current;
            limit.current = limit.maximum;
            if let Err(e) = setrlimit(Resource::Nofile, limit) {
                tracing::warn!(error = %e, "cannot raise the open-file limit");
                return before;
            }
        }
        limit.current
    }
    #[cfg(not(unix))]
    None
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Plain HTTP/1.1, served apart from h2c so that an idle connection can be parked (`serve_h1`).
/// The same settings as `http_builder`'s `http1()`: keep the two in step.
fn http1_builder(limits: &LimitsConfig) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.0)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    builder
}

/// HTTP/1.1 and h2c (prior knowledge) on one port, with hyper's timer set so that the header-read
/// timeout is really on.
fn http_builder(limits: &LimitsConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.0)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(limits.max_header_bytes as u32)
        // h2 flood limits (rapid reset and friends), at hyper's defaults but stated.
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024)
        .keep_alive_interval(None);
    builder
}

/// How long an idle connection may take to close gracefully before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// A plain HTTP/1.1 connection idle this long (up to twice this) after a request is parked: hyper's connection (its
/// read and write buffers, the in-flight slot sized for the whole stack's future) is freed and
/// only the socket is watched until the next byte, as nginx frees its buffers between requests.
/// Not at once: a busy keep-alive client would pay a new hyper connection per request.
const PARK_AFTER: Duration = Duration::from_secs(1);

/// The h2c connection preface (RFC 9113 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How the public listener serves a connection, from one configuration: each connection takes
/// the one in force when it is accepted.
struct Serving {
    builder: Arc<auto::Builder<TokioExecutor>>,
    h1: http1::Builder,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    /// `gateway_tls_handshake_errors_total{listener="public"}`.
    tls_handshake_errors: prometheus::IntCounter,
    metrics: Metrics,
    limits: LimitsConfig,
    trusted_proxies: Vec<ipnet::IpNet>,
    tls_handshake_timeout: Duration,
    drain_timeout: Duration,
    /// Connections closed over `max_connections_per_client` (kept across reloads).
    closed: Arc<CloseCounter>,
    started: Instant,
}

/// At most one log line per this interval about connections closed over the per-client cap.
const CLOSED_LOG_EVERY_MS: u64 = 10_000;

impl Serving {
    /// Reads the listener's certificate (when TLS is on) and sets up the HTTP builders.
    fn new(
        config: &Config,
        metrics: Metrics,
        closed: Arc<CloseCounter>,
        started: Instant,
    ) -> Result<Serving, StartError> {
        let acceptor = match (&config.listener.tls_cert, &config.listener.tls_key) {
            (Some(c), Some(k)) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
                tls::server_config(ReloadableCert::load(
                    c,
                    k,
                    metrics.certificate_expiry.with_label_values(&["listener"]),
                )?)?,
            ))),
            _ => None,
        };
        Ok(Serving {
            builder: Arc::new(http_builder(&config.limits)),
            h1: http1_builder(&config.limits),
            acceptor,
            tls_handshake_errors: metrics.tls_handshake_errors.with_label_values(&["public"]),
            metrics,
            limits: config.limits.clone(),
            trusted_proxies: config.listener.trusted_proxies.clone(),
            tls_handshake_timeout: config.listener.tls_handshake_timeout.0,
            drain_timeout: config.shutdown.drain_timeout.0,
            closed,
            started,
        })
    }
}

/// The public accept loop. Each connection is served by the settings in force when it was
/// accepted and each of its requests by the stack in force when the request arrived.
async fn serve_public<S>(
    current: Arc<ArcSwap<Serving>>,
    caps: Caps,
    listener: TcpListener,
    stack: S,
    mut stop: watch::Receiver<bool>,
) where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    loop {
        // At the cap, accept pauses until a connection closes.
        let permit = tokio::select! {
            _ = stop.changed() => break,
            permit = caps.public.acquire() => match permit {
                Some(p) => p,
                None => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_backoff(&e).await;
                    continue;
                }
            },
        };
        let this = current.load_full();
        // Per client: at accept only the peer is known. A trusted proxy carries many
        // clients, so it is held to max_connections alone.
        let client = if this.is_trusted(peer) {
            None
        } else {
            match caps.per_client.try_acquire(peer.ip()) {
                Some(slot) => Some(slot),
                None => {
                    this.close_over_client_cap(tcp, peer);
                    continue;
                }
            }
        };
        let stack = stack.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            this.metrics.open_connections.inc();
            this.connection(tcp, peer, stack, stop).await;
            this.metrics.open_connections.dec();
            drop(client);
            drop(permit);
        });
    }
    drop(listener);
    // Every connection holds a slot: all slots back means all connections are done.
    let drain_timeout = current.load().drain_timeout;
    if tokio::time::timeout(drain_timeout, caps.public.all_back())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout: closing connections with requests in flight");
    }
}

impl Serving {
    fn is_trusted(&self, peer: SocketAddr) -> bool {
        let ip = shed_client::key(peer.ip());
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// Closes a connection over `max_connections_per_client`, and counts it. No metric in
    /// gateway.md §3 fits a connection; a line at most every 10 s says how many, however fast a
    /// client reconnects.
    fn close_over_client_cap(&self, tcp: TcpStream, peer: SocketAddr) {
        drop(tcp);
        let ip = shed_client::key(peer.ip());
        tracing::debug!(client = %ip, "connection closed: over limits.max_connections_per_client");
        let now_ms = self.started.elapsed().as_millis() as u64 + 1;
        if let Some((closed, total)) = self.closed.record(now_ms, CLOSED_LOG_EVERY_MS) {
            tracing::warn!(
                client = %ip,
                closed,
                total,
                cap = self.limits.max_connections_per_client,
                "connections closed at accept: over limits.max_connections_per_client"
            );
        }
    }

    async fn connection<S>(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        stack: S,
        stop: watch::Receiver<bool>,
    ) where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let _ = tcp.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let svc = ConnService {
            stack,
            conn: ConnInfo::new(peer, self.acceptor.is_some(), &self.trusted_proxies),
            activity: activity.clone(),
        };
        match &self.acceptor {
            None => {
                // hyper's header timer starts with the first byte: a peer that sends none is
                // dropped here after `header_read_timeout`. (TLS has its handshake timeout.)
                // `peek` reads nothing away; `readable` alone may be ready before any byte is.
                let mut first = [0u8; H2_PREFACE.len()];
                let limit = self.limits.header_read_timeout.0;
                let n = match tokio::time::timeout(limit, tcp.peek(&mut first)).await {
                    Ok(Ok(n)) if n > 0 => n,
                    _ => {
                        tracing::debug!(%peer, "no byte within header_read_timeout");
                        return;
                    }
                };
                if H2_PREFACE.starts_with(&first[..n]) {
                    // h2c, or too few bytes to tell: hyper-util's auto builder reads on and
                    // decides. Boxed, so that it does not size every parked connection's task.
                    Box::pin(self.drive(TokioIo::new(tcp), svc, activity, stop)).await
                } else {
                    self.serve_h1(tcp, svc, activity, stop).await
                }
            }
            Some(acceptor) => {
                // Boxed: TLS state would otherwise make every plain connection's task larger.
                let accept = Box::pin(tokio::time::timeout(
                    self.tls_handshake_timeout,
                    acceptor.accept(tcp),
                ));
                match accept.await {
                    Ok(Ok(tls)) => {
                        Box::pin(self.drive(TokioIo::new(tls), svc, activity, stop)).await
                    }
                    Ok(Err(e)) => {
                        self.tls_handshake_errors.inc();
                        tracing::debug!(%peer, error = %e, "TLS handshake failed")
                    }
                    Err(_) => {
                        self.tls_handshake_errors.inc();
                        tracing::debug!(%peer, "TLS handshake timed out")
                    }
                }
            }
        }
    }

    /// Serves one connection until it ends, closing it gracefully when the gateway stops or when
    /// it has had no request in flight for `idle_timeout`.
    async fn drive<I, S>(
        &self,
        io: I,
        svc: ConnService<S>,
        activity: Arc<Activity>,
        mut stop: watch::Receiver<bool>,
    ) where
        I: Read + Write + Unpin + Send + 'static,
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let idle_timeout = self.limits.idle_timeout.0;
        let conn = self.builder.serve_connection(io, svc);
        tokio::pin!(conn);
        // Once closing, a peer that never answers h2's GOAWAY/PING cannot hold the connection
        // past this deadline.
        let mut hard_close: Option<Instant> = None;
        if *stop.borrow() {
            conn.as_mut().graceful_shutdown();
            hard_close = Some(Instant::now() + self.drain_timeout);
        }
        loop {
            let idle_at = activity.idle_deadline(idle_timeout);
            let closing = hard_close.is_some();
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        if let Some(status) = refused_below_the_stack(&*e) {
                            self.metrics.count_refused_below_the_stack(status);
                        }
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = stop.changed(), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    hard_close = Some(Instant::now() + self.drain_timeout);
                }
                _ = tokio::time::sleep_until(idle_at), if !closing => {
                    if activity.idle_for(idle_timeout) {
                        conn.as_mut().graceful_shutdown();
                        hard_close = Some(Instant::now() + idle_timeout.min(CLOSE_GRACE));
                    }
                }
                _ = tokio::time::sleep_until(hard_close.unwrap_or_else(Instant::now)), if closing => {
                    tracing::debug!("closing a connection that did not finish closing");
                    return;
                }
            }
        }
    }
}

impl Serving {
    /// Serves a plain HTTP/1.1 connection, parking it while it is idle: after `PARK_AFTER`
    /// without a request, hyper's connection is taken apart (bytes it read but did not parse are
    /// kept) and only the socket is watched. The first byte starts a new hyper connection, whose
    /// header-read timer then runs for the new head. A parked connection closes when the gateway
    /// stops, at EOF, or when it has been idle for `header_read_timeout` (or `idle_timeout`, if
    /// shorter), as an idle one inside hyper would.
    async fn serve_h1<S>(
        &self,
        tcp: TcpStream,
        mut svc: ConnService<S>,
        activity: Arc<Activity>,
        mut stop: watch::Receiver<bool>,
    ) where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let idle_limit = self
            .limits
            .header_read_timeout
            .0
            .min(self.limits.idle_timeout.0);
        let mut io = Rewind::new(tcp);
        loop {
            let conn = Box::new(self.h1.serve_connection(TokioIo::new(io), svc));
            // Boxed too: its timers and select state would otherwise size the parked task.
            let Some(parts) = Box::pin(self.drive_h1(conn, &activity, &mut stop)).await else {
                return;
            };
            svc = parts.service;
            io = parts.io.into_inner();
            tracing::trace!(peer = %svc.conn.peer, unread = parts.read_buf.len(), "idle HTTP/1.1 connection parked");
            io.unread(parts.read_buf);
            if io.has_unread() {
                // Part of the next request already arrived: serve it at once.
                continue;
            }
            let mut byte = [0u8; 1];
            let idle_until = activity.idle_since() + idle_limit;
            tokio::select! {
                peeked = io.inner.peek(&mut byte) => match peeked {
                    Ok(n) if n > 0 => continue,
                    _ => return,
                },
                _ = stop.changed() => return,
                _ = tokio::time::sleep_until(idle_until) => {
                    tracing::debug!("closing a parked connection idle for header_read_timeout");
                    return;
                }
            }
        }
    }

    /// `drive` for one plain HTTP/1.1 hyper connection that can also be parked: returns its parts
    /// when it was taken apart idle, `None` when the connection is over.
    async fn drive_h1<S>(
        &self,
        mut conn: Box<http1::Connection<TokioIo<Rewind<TcpStream>>, ConnService<S>>>,
        activity: &Activity,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<H1Parts<S>>
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let idle_timeout = self.limits.idle_timeout.0;
        let requests_at_start = activity.requests();
        let mut hard_close: Option<Instant> = None;
        if *stop.borrow() {
            Pin::new(&mut *conn).graceful_shutdown();
            hard_close = Some(Instant::now() + self.drain_timeout);
        }
        // Serving, until the connection ends, is closing, or is to be parked.
        while hard_close.is_none() {
            let wake = activity
                .idle_deadline(idle_timeout)
                .min(activity.park_deadline(requests_at_start));
            tokio::select! {
                result = &mut *conn => {
                    self.ended(result.map_err(Into::into));
                    return None;
                }
                _ = stop.changed() => {
                    Pin::new(&mut *conn).graceful_shutdown();
                    hard_close = Some(Instant::now() + self.drain_timeout);
                }
                _ = tokio::time::sleep_until(wake) => {
                    if activity.idle_for(idle_timeout) {
                        Pin::new(&mut *conn).graceful_shutdown();
                        hard_close = Some(Instant::now() + idle_timeout.min(CLOSE_GRACE));
                    } else if activity.parkable(requests_at_start) {
                        // Idle: hyper closes its side at once and leaves the socket to us. Were
                        // it still writing, it finishes the response first.
                        Pin::new(&mut *conn).graceful_shutdown();
                        break;
                    }
                }
            }
        }
        if let Some(deadline) = hard_close {
            // Closing: as `drive`.
            tokio::select! {
                result = &mut *conn => self.ended(result.map_err(Into::into)),
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::debug!("closing a connection that did not finish closing");
                }
            }
            return None;
        }
        // Parking. Boxed: the connection is moved into the future, not into this task's state.
        let mut parting = Box::pin(conn.without_shutdown());
        let mut deadline = activity.idle_since() + idle_timeout.max(CLOSE_GRACE);
        let mut stopping = false;
        loop {
            tokio::select! {
                parts = &mut parting => return match parts {
                    Ok(parts) if !*stop.borrow() => Some(parts),
                    Ok(_) => None,
                    Err(e) => {
                        self.ended(Err(e.into()));
                        None
                    }
                },
                _ = stop.changed(), if !stopping => {
                    stopping = true;
                    deadline = deadline.min(Instant::now() + self.drain_timeout);
                }
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::debug!("closing a connection that did not finish its last response");
                    return None;
                }
            }
        }
    }

    /// How a connection ended: a head hyper refused itself is counted.
    fn ended(&self, result: Result<(), BoxError>) {
        if let Err(e) = result {
            if let Some(status) = refused_below_the_stack(&*e) {
                self.metrics.count_refused_below_the_stack(status);
            }
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

type H1Parts<S> = http1::Parts<TokioIo<Rewind<TcpStream>>, ConnService<S>>;

/// A socket with bytes already read from it put back in front.
struct Rewind<T> {
    unread: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    fn new(inner: T) -> Self {
        Rewind {
            unread: Bytes::new(),
            inner,
        }
    }

    /// Puts `bytes` back, in front of any still unread. Copied: `bytes` is a view into hyper's
    /// whole read buffer (even when empty), which it would otherwise keep alive.
    fn unread(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        let mut all = bytes::BytesMut::with_capacity(bytes.len() + self.unread.len());
        all.extend_from_slice(&bytes);
        all.extend_from_slice(&self.unread);
        self.unread = all.freeze();
    }

    fn has_unread(&self) -> bool {
        !self.unread.is_empty()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.unread.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.unread.len().min(buf.remaining());
        if n == self.unread.len() {
            // Taken, not split: an empty view would still hold the allocation.
            buf.put_slice(&std::mem::take(&mut self.unread));
        } else {
            buf.put_slice(&self.unread.split_to(n));
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The status hyper answered with when it refused a request head itself, if it did: 431 for a
/// head too large, 400 for any other framing error. The URI limit that hyper answers with 414 lies
/// beyond `max_header_bytes`, so a too-large head is always 431 here.
fn refused_below_the_stack(e: &(dyn std::error::Error + 'static)) -> Option<StatusCode> {
    let e = e.downcast_ref::<hyper::Error>()?;
    if e.is_parse_too_large() {
        Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
    } else if e.is_parse() && !e.is_parse_status() && !e.is_parse_version_h2() {
        Some(StatusCode::BAD_REQUEST)
    } else {
        None
    }
}

/// Requests in flight on one connection, and when it last became idle.
struct Activity {
    inflight: AtomicUsize,
    idle_since_ms: AtomicU64,
    /// Requests begun on the connection so far.
    requests: AtomicU64,
    origin: Instant,
}

impl Activity {
    fn new() -> Self {
        Activity {
            inflight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }

    fn begin(&self) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.inflight.fetch_add(1, Ordering::SeqCst);
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// When the connection last became idle (when it was opened, if it never was busy).
    fn idle_since(&self) -> Instant {
        self.origin + Duration::from_millis(self.idle_since_ms.load(Ordering::SeqCst))
    }

    /// Parkable: a request has been served since `mark` (so a connection resumed on a partial
    /// head is never parked again before it completes a request), none is in flight, and none
    /// has been for `PARK_AFTER`.
    fn parkable(&self, mark: u64) -> bool {
        self.requests() > mark && self.idle_for(PARK_AFTER)
    }

    /// When to check `parkable` next. Nothing wakes the driver when a request starts or ends,
    /// so while none has been served since `mark`, or one is in flight, it looks again after
    /// `PARK_AFTER`: an idle connection is parked between `PARK_AFTER` and twice that.
    fn park_deadline(&self, mark: u64) -> Instant {
        let now = Instant::now();
        if self.requests() == mark || self.inflight.load(Ordering::SeqCst) > 0 {
            return now + PARK_AFTER;
        }
        (self.idle_since() + PARK_AFTER).max(now + Duration::from_millis(10))
    }

    fn end(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.idle_since_ms.store(ms, Ordering::SeqCst);
        self.inflight.fetch_sub(1, Ordering::SeqCst);
    }

    /// When the connection will have been idle for `timeout`, if nothing starts.
    fn idle_deadline(&self, timeout: Duration) -> Instant {
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::SeqCst));
        let at = self.origin + since + timeout;
        at.max(Instant::now() + Duration::from_millis(10))
    }

    fn idle_for(&self, timeout: Duration) -> bool {
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::SeqCst));
        self.inflight.load(Ordering::SeqCst) == 0 && self.origin.elapsed() >= since + timeout
    }
}

/// Adapts the tower stack to one hyper connection: boxes the body, tags each request with the
/// connection's `ConnInfo`, and tracks requests in flight for the idle timeout.
#[derive(Clone)]
struct ConnService<S> {
    stack: S,
    conn: ConnInfo,
    activity: Arc<Activity>,
}

impl<S> hyper::service::Service<Request<Incoming>> for ConnService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
{
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = Tracked<tower::util::Oneshot<S, Request<Body>>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let mut req = req.map(box_body);
        req.extensions_mut().insert(self.conn);
        self.activity.begin();
        Tracked {
            inner: self.stack.clone().oneshot(req),
            guard: Some(InFlight(self.activity.clone())),
        }
    }
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

pin_project! {
    /// A request in flight; when its response is ready, the guard moves into the response body.
    pub struct Tracked<F> {
        #[pin]
        inner: F,
        guard: Option<InFlight>,
    }
}

impl<F, E> Future for Tracked<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<TrackedBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx));
        let guard = this.guard.take();
        Poll::Ready(response.map(|r| r.map(|inner| TrackedBody { inner, guard })))
    }
}

/// A response body whose request stays in flight, for the idle timeout, until the body has ended
/// or is dropped: a response still streaming is not an idle connection.
pub struct TrackedBody {
    inner: Body,
    guard: Option<InFlight>,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if frame.is_none() {
            self.guard = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Out of file descriptors (EMFILE) or another accept error: back off instead of spinning.
async fn accept_backoff(e: &std::io::Error) {
    tracing::warn!(error = %e, "accept failed; backing off");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// The admin accept loop: at most `admin.max_connections` connections; one beyond it is closed
/// at once, so that the admin port holds no more descriptors or memory than its cap.
async fn serve_admin(
    listener: TcpListener,
    svc: admin::Service,
    settings: Arc<ArcSwap<AdminSettings>>,
    slots: Arc<Cap>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                accept_backoff(&e).await;
                continue;
            }
        };
        let Some(permit) = slots.try_acquire() else {
            tracing::debug!(%peer, "admin connection over admin.max_connections: closed");
            drop(tcp);
            continue;
        };
        let svc = svc.clone();
        let settings = settings.load_full();
        tokio::spawn(async move {
            admin::serve_connection(tcp, peer, &settings.builder, svc, settings.limits).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_parkable_only_idle_after_a_request_since_the_mark() {
        let a = Activity::new();
        tokio::time::advance(PARK_AFTER * 3).await;
        // No request since the mark (a fresh or just resumed connection): never parked.
        assert!(!a.parkable(0));
        assert_eq!(a.park_deadline(0), Instant::now() + PARK_AFTER);

        a.begin();
        tokio::time::advance(PARK_AFTER * 3).await;
        assert!(!a.parkable(0), "parked with a request in flight");
        assert_eq!(a.park_deadline(0), Instant::now() + PARK_AFTER);

        a.end();
        let ended = Instant::now();
        assert!(!a.parkable(0));
        assert_eq!(a.park_deadline(0), ended + PARK_AFTER);
        tokio::time::advance(PARK_AFTER).await;
        assert!(a.parkable(0));
        // Resumed after that request (mark 1): not again until another one is served.
        assert!(!a.parkable(1));
    }

    #[tokio::test]
    async fn a_cap_resized_by_a_reload_takes_its_new_size_as_slots_come_back() {
        let cap = Cap::new(2);
        let a = cap.try_acquire().unwrap();
        let b = cap.try_acquire().unwrap();
        assert!(cap.try_acquire().is_none());
        // Grown: a slot at once.
        cap.resize(3);
        let c = cap.try_acquire().unwrap();
        // Shrunk below what is held: no slot until enough come back.
        cap.resize(1);
        drop(a);
        drop(b);
        tokio::task::yield_now().await;
        assert!(cap.try_acquire().is_none(), "over the new size");
        drop(c);
        let d = cap.try_acquire().expect("one slot at size 1");
        assert!(cap.try_acquire().is_none());
        drop(d);
        tokio::time::timeout(Duration::from_secs(1), cap.all_back())
            .await
            .expect("every slot back");
    }

    #[tokio::test]
    async fn rewind_reads_the_put_back_bytes_first_in_order() {
        let (client, mut server) = tokio::io::duplex(64);
        let mut io = Rewind::new(client);
        server.write_all(b" world").await.unwrap();
        drop(server);
        io.unread(Bytes::from_static(b"lo,"));
        io.unread(Bytes::from_static(b"hel"));
        assert!(io.has_unread());
        let mut out = String::new();
        io.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello, world");
        assert!(!io.has_unread());
    }

    #[tokio::test]
    async fn rewind_keeps_no_view_into_hyper_s_read_buffer() {
        // As hyper leaves its read buffer: a request split off the front, the rest empty or a
        // partial next head, all in one 8 KB allocation.
        for next in [&b""[..], b"GET /b HTTP/1.1\r\nHo"] {
            let mut buf = bytes::BytesMut::with_capacity(8192);
            buf.extend_from_slice(b"GET /a HTTP/1.1\r\n\r\n");
            buf.extend_from_slice(next);
            let request = buf.split_to(19).freeze();
            let mut io = Rewind::new(tokio::io::empty());
            io.unread(buf.freeze());
            assert!(request.is_unique(), "a parked connection would hold 8 KB");
            let mut out = Vec::new();
            io.read_to_end(&mut out).await.unwrap();
            assert_eq!(out, next);
        }
    }
}
