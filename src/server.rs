//! The listeners, the accept loops and the process lifecycle: start, serve, drain, stop.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tower::{Service, ServiceExt};

use crate::admin::{self, Readiness};
use crate::config::{Config, LimitsConfig};
use crate::headers::ConnInfo;
use crate::metrics::Metrics;
use crate::stack::Options;
use crate::upstream::SetupError;
use crate::{box_body, stack, Body};

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
    stop: watch::Sender<bool>,
    public: JoinHandle<()>,
    admin: JoinHandle<()>,
    drain_delay: Duration,
}

impl Running {
    /// Drains: not ready, wait `drain_delay`, stop accepting, let in-flight requests finish for up
    /// to `drain_timeout`, then stop the admin listener.
    pub async fn shutdown(self) {
        self.readiness.set(false);
        tokio::time::sleep(self.drain_delay).await;
        let _ = self.stop.send(true);
        // The public loop closes its listener, then waits up to `drain_timeout` for connections.
        let _ = self.public.await;
        self.admin.abort();
    }
}

/// Builds the stack, binds both listeners and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    start_with(config, Options::default()).await
}

/// `start`, with test hooks.
pub async fn start_with(config: Config, options: Options) -> Result<Running, StartError> {
    // The only provider in the graph; installing it explicitly keeps rustls from guessing.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = Metrics::new(&config.metrics.buckets)?;
    let stack = stack::build(&config, &metrics, &options)?;
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

    let builder = Arc::new(http_builder(&config.limits));
    let public = tokio::spawn(serve_public(
        public_listener,
        builder,
        stack,
        metrics.clone(),
        config.limits.max_connections,
        config.shutdown.drain_timeout.0,
        stop_rx.clone(),
    ));
    let admin = tokio::spawn(serve_admin(
        admin_listener,
        admin::service(metrics.clone(), readiness.clone()),
    ));
    readiness.set(true);
    tracing::info!(%public_addr, %admin_addr, "companies-gateway listening");
    Ok(Running {
        public_addr,
        admin_addr,
        metrics,
        readiness,
        stop,
        public,
        admin,
        drain_delay: config.shutdown.drain_delay.0,
    })
}

/// Runs the gateway until SIGTERM or SIGINT, then drains. Builds its own runtime from `[runtime]`.
pub fn run(config: Config) -> Result<(), StartError> {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if config.runtime.worker_threads > 0 {
        rt.worker_threads(config.runtime.worker_threads);
    }
    let rt = rt.enable_all().build().map_err(StartError::Runtime)?;
    rt.block_on(async move {
        let running = start(config).await?;
        shutdown_signal().await;
        tracing::info!("shutdown signal received; draining");
        running.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    })
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
        .keep_alive_interval(Some(limits.idle_timeout.0))
        .keep_alive_timeout(limits.idle_timeout.0);
    builder
}

async fn serve_public<S>(
    listener: TcpListener,
    builder: Arc<auto::Builder<TokioExecutor>>,
    stack: S,
    metrics: Metrics,
    max_connections: usize,
    drain_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let permit = tokio::select! {
            _ = stop.changed() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
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
        let _ = tcp.set_nodelay(true);
        let conn = ConnInfo { peer, tls: false };
        let hyper_svc = ConnService {
            stack: stack.clone(),
            conn,
        };
        let serving = builder
            .serve_connection(TokioIo::new(tcp), hyper_svc)
            .into_owned();
        let watched = graceful.watch(serving);
        let open = metrics.open_connections.clone();
        open.inc();
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            open.dec();
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout: closing connections with requests in flight");
    }
}

/// Adapts the tower stack to one hyper connection: boxes the body and tags each request with the
/// connection's `ConnInfo`.
#[derive(Clone)]
struct ConnService<S> {
    stack: S,
    conn: ConnInfo,
}

impl<S> hyper::service::Service<Request<Incoming>> for ConnService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = tower::util::Oneshot<S, Request<Body>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let mut req = req.map(box_body);
        req.extensions_mut().insert(self.conn);
        self.stack.clone().oneshot(req)
    }
}

/// Out of file descriptors (or another accept error): back off instead of spinning.
async fn accept_backoff(e: &std::io::Error) {
    tracing::warn!(error = %e, "accept failed; backing off");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

async fn serve_admin<F, Fut>(listener: TcpListener, svc: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                accept_backoff(&e).await;
                continue;
            }
        };
        let svc = svc.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| svc(req));
            let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
        });
    }
}
