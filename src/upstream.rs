//! Connecting to the upstream: hyper-rustls (ring, https only) over hyper-util's TCP connector,
//! bounded by `connect_timeout`, counting the connections it opens. `pool.rs` keeps them.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;
use tower::Service;

use crate::config::{UpstreamConfig, UpstreamTarget};
use crate::pool::{Pool, PoolSettings};
use crate::BoxError;

/// Setting up the client failed: a bad `ca_file`.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("upstream.ca_file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0}")]
    Config(String),
}

/// The TCP connect failed (refused, unreachable, DNS): marks the error as `connect`, not `tls`.
#[derive(Debug, thiserror::Error)]
#[error("tcp connect: {0}")]
pub struct TcpConnectError(#[source] BoxError);

/// TCP + TLS did not finish within `connect_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("connect timed out")]
pub struct ConnectTimeout;

/// `HttpConnector` with its errors marked as TCP errors.
#[derive(Clone)]
pub struct TcpConnector(HttpConnector);

impl Service<Uri> for TcpConnector {
    type Response = TokioIo<TcpStream>;
    type Error = TcpConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0
            .poll_ready(cx)
            .map_err(|e| TcpConnectError(Box::new(e)))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let fut = self.0.call(uri);
        Box::pin(async move { fut.await.map_err(|e| TcpConnectError(Box::new(e))) })
    }
}

/// The connector the pool uses: TCP + TLS within `timeout`, counted once established. Its TLS
/// settings can be swapped (`UpstreamTls::reload`) without touching pooled connections.
#[derive(Clone)]
pub struct Connector {
    https: Arc<RwLock<HttpsConnector<TcpConnector>>>,
    timeout: Duration,
    opened: IntCounter,
}

/// Re-reads `[upstream] ca_file` into the connector.
#[derive(Clone)]
pub struct UpstreamTls {
    https: Arc<RwLock<HttpsConnector<TcpConnector>>>,
    cfg: UpstreamConfig,
}

impl UpstreamTls {
    /// A bad file is refused and the old trust anchors stay in force.
    pub fn reload(&self) -> Result<(), SetupError> {
        let fresh = https_connector(&self.cfg)?;
        if let Ok(mut current) = self.https.write() {
            *current = fresh;
        }
        Ok(())
    }

    pub fn ca_file(&self) -> Option<&Path> {
        self.cfg.ca_file.as_deref()
    }
}

impl Service<Uri> for Connector {
    type Response = MaybeHttpsStream<TokioIo<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // HttpConnector and hyper-rustls are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mut https = match self.https.read() {
            Ok(h) => h.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let fut = https.call(uri);
        let timeout = self.timeout;
        let opened = self.opened.clone();
        Box::pin(async move {
            match tokio::time::timeout(timeout, fut).await {
                Ok(Ok(stream)) => {
                    opened.inc();
                    Ok(stream)
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(Box::new(ConnectTimeout) as BoxError),
            }
        })
    }
}

/// Trust anchors: the PEM file when given, Mozilla's roots otherwise.
pub fn root_store(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, SetupError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let ca_error = |message: String| SetupError::CaFile {
                path: path.display().to_string(),
                message,
            };
            let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
            let mut found = 0;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| ca_error(e.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|e| ca_error(format!("bad certificate: {e}")))?;
                found += 1;
            }
            if found == 0 {
                return Err(ca_error("holds no PEM certificate".into()));
            }
        }
    }
    Ok(roots)
}

/// The client TLS configuration, on the ring provider.
pub fn tls_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, SetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn https_connector(cfg: &UpstreamConfig) -> Result<HttpsConnector<TcpConnector>, SetupError> {
    let tls = tls_config(root_store(cfg.ca_file.as_deref())?)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cfg.connect_timeout.0));
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1();
    Ok(if cfg.http2 {
        builder.enable_http2().wrap_connector(TcpConnector(http))
    } else {
        builder.wrap_connector(TcpConnector(http))
    })
}

/// Builds the connection pool for `[upstream]`, and the handle that reloads its trust anchors.
pub fn build_pool(
    cfg: &UpstreamConfig,
    target: &UpstreamTarget,
    opened: IntCounter,
) -> Result<(Pool, UpstreamTls), SetupError> {
    let https = Arc::new(RwLock::new(https_connector(cfg)?));
    let reload = UpstreamTls {
        https: https.clone(),
        cfg: cfg.clone(),
    };
    let connector = Connector {
        https,
        timeout: cfg.connect_timeout.0,
        opened,
    };
    let settings = PoolSettings {
        idle_timeout: cfg.pool_idle_timeout.0,
        max_idle: cfg.pool_max_idle_per_host,
        http2: cfg.http2,
    };
    Ok((Pool::new(connector, target, settings), reload))
}
