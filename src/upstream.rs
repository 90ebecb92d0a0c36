//! Connecting to the upstream: TCP to the address the pool picked (`endpoints.rs`), through the
//! egress proxy's CONNECT tunnel when there is one (`proxy.rs`), then TLS with tokio-rustls on the
//! ring provider, verifying the URL's host name whatever the address, all within
//! `connect_timeout`, counted once established. `pool.rs` keeps the connections; this module knows
//! nothing of the pool.
//!
//! Trust anchors and the client certificate can be swapped (`UpstreamTls::reload`). Each swap
//! that changes them starts a new trust generation; every connection carries the generation it
//! was made under, so that the pool can retire connections made under the old trust (gateway.md
//! §6).

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::uri::Authority;
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::UpstreamConfig;
use crate::outcome::UpstreamErrorKind;
use crate::proxy::{ProxyUrl, TunnelError};

/// Setting up the client failed: a bad `ca_file` or client certificate.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("upstream.ca_file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("upstream.{key} {path}: {message}")]
    ClientCert {
        key: &'static str,
        path: String,
        message: String,
    },
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0}")]
    Config(String),
}

/// A connection could not be set up. Each variant names the upstream (and the address, once one
/// was picked) and carries the OS or TLS error, so that the operator's log line says what failed.
/// None of it comes from the request.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The host name did not resolve.
    #[error("resolve {authority}: {source}")]
    Resolve {
        authority: Authority,
        #[source]
        source: std::io::Error,
    },
    /// TCP connect refused or unreachable.
    #[error("connect {addr}: {source}")]
    Tcp {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The egress proxy at `addr` refused or broke the CONNECT tunnel. `proxy` is masked.
    #[error("proxy {proxy} at {addr}: {source}")]
    Proxy {
        proxy: String,
        addr: SocketAddr,
        #[source]
        source: TunnelError,
    },
    /// The TLS handshake failed: the certificate's name, issuer or dates, or an alert.
    #[error("TLS handshake with {authority} at {addr}: {source}")]
    Tls {
        authority: Authority,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// TCP + TLS did not finish within `connect_timeout`.
    #[error("connect {authority}: timed out after {after:?}")]
    Timeout {
        authority: Authority,
        after: Duration,
    },
}

impl ConnectError {
    /// The metric `kind`, by variant.
    pub fn kind(&self) -> UpstreamErrorKind {
        match self {
            ConnectError::Resolve { .. }
            | ConnectError::Tcp { .. }
            | ConnectError::Proxy { .. } => UpstreamErrorKind::Connect,
            ConnectError::Tls { .. } => UpstreamErrorKind::Tls,
            ConnectError::Timeout { .. } => UpstreamErrorKind::Timeout,
        }
    }
}

/// An established upstream connection.
pub struct Connected {
    pub io: TokioIo<TlsStream<TcpStream>>,
    /// ALPN picked h2.
    pub h2: bool,
    /// The trust generation it was made under.
    pub generation: u64,
}

/// The TLS client configuration in force, and its generation.
struct Trust {
    config: Arc<rustls::ClientConfig>,
    /// The CA file's bytes it was built from (`None`: Mozilla's roots), to tell a change.
    ca_pem: Option<Vec<u8>>,
    /// The client certificate and key files' bytes, to tell a change.
    client_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// The client certificate's `notAfter`, in Unix seconds.
    client_expiry: Option<i64>,
}

/// Shared by the connector, the pool and the reload handle.
struct TrustState {
    current: RwLock<Arc<Trust>>,
    /// Bumped when the trust anchors change; read on every check-in.
    generation: AtomicU64,
    /// The same generation, for whoever waits for a change (the pool's reaper).
    changed: watch::Sender<u64>,
}

/// Where to connect, and how; cheap to clone.
#[derive(Clone)]
pub struct Connector {
    trust: Arc<TrustState>,
    authority: Authority,
    /// `host:port` for the proxy's CONNECT.
    connect_target: Arc<str>,
    proxy: Option<Arc<ProxyUrl>>,
    server_name: ServerName<'static>,
    timeout: Duration,
    opened: IntCounter,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// A connector to `authority` (an https URL's), with the trust of `cfg`, through `proxy`.
    pub(crate) fn new(
        cfg: &UpstreamConfig,
        authority: &Authority,
        proxy: Option<ProxyUrl>,
        opened: IntCounter,
    ) -> Result<(Connector, UpstreamTls), SetupError> {
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|e| SetupError::Config(format!("upstream.url: host `{host}`: {e}")))?;
        let trust = load_trust(cfg)?;
        let (changed, _) = watch::channel(0);
        let state = Arc::new(TrustState {
            current: RwLock::new(Arc::new(trust)),
            generation: AtomicU64::new(0),
            changed,
        });
        let connector = Connector {
            trust: state.clone(),
            authority: authority.clone(),
            connect_target: Arc::from(format!(
                "{}:{}",
                authority.host(),
                authority.port_u16().unwrap_or(443)
            )),
            proxy: proxy.map(Arc::new),
            server_name,
            timeout: cfg.connect_timeout.0,
            opened,
        };
        let reload = UpstreamTls {
            trust: state,
            cfg: cfg.clone(),
        };
        Ok((connector, reload))
    }

    /// The URL's authority, for errors.
    pub(crate) fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The trust generation new connections are made under.
    pub fn generation(&self) -> u64 {
        self.trust.generation.load(Ordering::Acquire)
    }

    /// Changes whenever the trust generation does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.trust.changed.subscribe()
    }

    /// TCP to `addr` (the proxy's, when there is one; then the tunnel) + TLS, within
    /// `connect_timeout`.
    pub(crate) async fn connect(&self, addr: SocketAddr) -> Result<Connected, ConnectError> {
        // The generation is read with the configuration it belongs to.
        let (config, generation) = {
            let current = match self.trust.current.read() {
                Ok(t) => t,
                Err(poisoned) => poisoned.into_inner(),
            };
            (current.config.clone(), self.generation())
        };
        let attempt = async {
            let tcp = self.tcp(addr).await?;
            let tls = TlsConnector::from(config)
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(|source| ConnectError::Tls {
                    authority: self.authority.clone(),
                    addr,
                    source,
                })?;
            Ok::<_, ConnectError>(tls)
        };
        let tls = tokio::time::timeout(self.timeout, attempt)
            .await
            .map_err(|_| ConnectError::Timeout {
                authority: self.authority.clone(),
                after: self.timeout,
            })??;
        self.opened.inc();
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok(Connected {
            io: TokioIo::new(tls),
            h2,
            generation,
        })
    }

    async fn tcp(&self, addr: SocketAddr) -> Result<TcpStream, ConnectError> {
        let mut tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| ConnectError::Tcp { addr, source })?;
        // Requests are written whole; Nagle would only delay them.
        let _ = tcp.set_nodelay(true);
        if let Some(proxy) = &self.proxy {
            crate::proxy::tunnel(&mut tcp, proxy, &self.connect_target)
                .await
                .map_err(|source| ConnectError::Proxy {
                    proxy: proxy.to_string(),
                    addr,
                    source,
                })?;
        }
        Ok(tcp)
    }
}

/// Trust anchors read by `UpstreamTls::prepare`, not yet in force.
pub struct NewTrust(Trust);

/// Re-reads `[upstream] ca_file`, `client_cert` and `client_key` into the connector.
#[derive(Clone)]
pub struct UpstreamTls {
    trust: Arc<TrustState>,
    cfg: UpstreamConfig,
}

impl UpstreamTls {
    /// A bad file is refused and the old trust anchors stay in force. `Ok(true)`: the anchors
    /// changed, and connections made under the old ones are retired.
    pub fn reload(&self) -> Result<bool, SetupError> {
        Ok(match self.prepare()? {
            Some(fresh) => {
                self.install(fresh);
                true
            }
            None => false,
        })
    }

    /// Reads the anchors again without putting them in force (a reload validates everything
    /// before it changes anything): `None` when they are unchanged.
    pub fn prepare(&self) -> Result<Option<NewTrust>, SetupError> {
        let fresh = load_trust(&self.cfg)?;
        let current = match self.trust.current.read() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        let changed = current.ca_pem != fresh.ca_pem || current.client_pem != fresh.client_pem;
        Ok(changed.then_some(NewTrust(fresh)))
    }

    /// Puts prepared anchors in force: a new trust generation, so that connections made under the
    /// old one are retired (idle ones at once, busy ones after their response).
    pub fn install(&self, fresh: NewTrust) {
        let mut current = match self.trust.current.write() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        *current = Arc::new(fresh.0);
        drop(current);
        self.retire();
    }

    /// Retires every connection made so far, as a trust change does: for a pool being replaced.
    pub fn retire(&self) {
        let generation = self.trust.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.trust.changed.send_replace(generation);
    }

    pub fn ca_file(&self) -> Option<&Path> {
        self.cfg.ca_file.as_deref()
    }

    /// The client certificate in force: its `notAfter` as Unix seconds, for
    /// `gateway_certificate_expiry_timestamp_seconds{certificate="upstream_client"}`. `None`
    /// without mutual TLS. Follows reloads.
    pub(crate) fn client_cert_expiry(&self) -> Option<i64> {
        match self.trust.current.read() {
            Ok(t) => t.client_expiry,
            Err(poisoned) => poisoned.into_inner().client_expiry,
        }
    }
}

/// Trust anchors: the PEM file when given, Mozilla's roots otherwise.
pub fn root_store(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, SetupError> {
    match ca_file {
        None => Ok(mozilla_roots()),
        Some(path) => {
            let pem = read_ca(path)?;
            parse_roots(path, &pem)
        }
    }
}

fn mozilla_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    roots
}

fn ca_error(path: &Path, message: String) -> SetupError {
    SetupError::CaFile {
        path: path.display().to_string(),
        message,
    }
}

fn read_ca(path: &Path) -> Result<Vec<u8>, SetupError> {
    std::fs::read(path).map_err(|e| ca_error(path, e.to_string()))
}

fn parse_roots(path: &Path, pem: &[u8]) -> Result<rustls::RootCertStore, SetupError> {
    let mut roots = rustls::RootCertStore::empty();
    let mut found = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| ca_error(path, e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| ca_error(path, format!("bad certificate: {e}")))?;
        found += 1;
    }
    if found == 0 {
        return Err(ca_error(path, "holds no PEM certificate".into()));
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

/// The client certificate pair: the chain, the key, both files' bytes and the leaf's expiry.
type ClientAuth = (
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
    (Vec<u8>, Vec<u8>),
    Option<i64>,
);

pub(crate) fn load_client_auth(cert: &Path, key: &Path) -> Result<ClientAuth, SetupError> {
    let err = |k: &'static str, p: &Path, message: String| SetupError::ClientCert {
        key: k,
        path: p.display().to_string(),
        message,
    };
    let cert_pem = std::fs::read(cert).map_err(|e| err("client_cert", cert, e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| err("client_cert", cert, e.to_string()))?;
    let Some(leaf) = chain.first() else {
        return Err(err("client_cert", cert, "holds no PEM certificate".into()));
    };
    let expiry = crate::x509::not_after(leaf);
    let key_pem = std::fs::read(key).map_err(|e| err("client_key", key, e.to_string()))?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| err("client_key", key, e.to_string()))?;
    // Refuses a key that does not match the certificate, as the listener's does.
    rustls::sign::CertifiedKey::from_der(
        chain.clone(),
        private.clone_key(),
        &rustls::crypto::ring::default_provider(),
    )
    .map_err(|e| {
        err(
            "client_key",
            key,
            format!("does not match the certificate: {e}"),
        )
    })?;
    Ok((chain, private, (cert_pem, key_pem), expiry))
}

/// The upstream's TLS configuration: its anchors, the client certificate for mutual TLS, and
/// ALPN (h2 only when `http2` is on).
fn load_trust(cfg: &UpstreamConfig) -> Result<Trust, SetupError> {
    let (roots, ca_pem) = match cfg.ca_file.as_deref() {
        None => (mozilla_roots(), None),
        Some(path) => {
            let pem = read_ca(path)?;
            (parse_roots(path, &pem)?, Some(pem))
        }
    };
    let (mut config, client_pem, client_expiry) =
        match (cfg.client_cert.as_deref(), cfg.client_key.as_deref()) {
            (Some(cert), Some(key)) => {
                let (chain, private, pem, expiry) = load_client_auth(cert, key)?;
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(roots)
                    .with_client_auth_cert(chain, private)?;
                (config, Some(pem), expiry)
            }
            _ => (tls_config(roots)?, None, None),
        };
    config.alpn_protocols = if cfg.http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Trust {
        config: Arc::new(config),
        ca_pem,
        client_pem,
        client_expiry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> ConnectError {
        ConnectError::Tcp {
            addr: "127.0.0.1:443".parse().unwrap(),
            source: std::io::Error::from_raw_os_error(111),
        }
    }

    #[test]
    fn a_connect_error_names_the_address_and_the_os_error() {
        let text = refused().to_string();
        assert!(text.starts_with("connect 127.0.0.1:443: "), "{text}");
        assert!(text.contains("os error 111"), "{text}");
        assert_eq!(refused().kind(), UpstreamErrorKind::Connect);
    }

    #[test]
    fn a_proxy_error_names_the_proxy_without_its_credentials() {
        let proxy = ProxyUrl::parse("http://user:hunter2@proxy.corp:3128").unwrap();
        let err = ConnectError::Proxy {
            proxy: proxy.to_string(),
            addr: "192.0.2.7:3128".parse().unwrap(),
            source: TunnelError::Refused("HTTP/1.1 407 Proxy Authentication Required".into()),
        };
        let text = err.to_string();
        assert!(text.contains("http://***@proxy.corp:3128"), "{text}");
        assert!(text.contains("407"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(err.kind(), UpstreamErrorKind::Connect);
    }

    #[test]
    fn a_tls_error_names_the_upstream_and_the_reason() {
        let err = ConnectError::Tls {
            authority: Authority::from_static("api.example:8443"),
            addr: "192.0.2.7:8443".parse().unwrap(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
            ),
        };
        let text = err.to_string();
        assert!(text.contains("api.example:8443"), "{text}");
        assert!(text.contains("192.0.2.7:8443"), "{text}");
        assert!(text.contains("UnknownIssuer"), "{text}");
        assert_eq!(err.kind(), UpstreamErrorKind::Tls);
    }
}
