//! Listener TLS: the certificate and its key, read and checked at each load. A reload builds a new
//! acceptor: new handshakes get the new certificate; open connections keep theirs.

use std::path::Path;
use std::sync::Arc;

use prometheus::IntGauge;
use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
#[error("listener.{key} {path}: {message}")]
pub struct CertError {
    pub key: &'static str,
    pub path: String,
    pub message: String,
}

/// Reads and checks a PEM chain and its private key.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, CertError> {
    let err = |k: &'static str, p: &Path, message: String| CertError {
        key: k,
        path: p.display().to_string(),
        message,
    };
    let pem = std::fs::read(cert).map_err(|e| err("tls_cert", cert, e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| err("tls_cert", cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(err("tls_cert", cert, "holds no PEM certificate".into()));
    }
    let key_pem = std::fs::read(key).map_err(|e| err("tls_key", key, e.to_string()))?;
    let private =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| err("tls_key", key, e.to_string()))?;
    CertifiedKey::from_der(chain, private, &default_provider()).map_err(|e| {
        err(
            "tls_key",
            key,
            format!("does not match the certificate: {e}"),
        )
    })
}

/// Sets `gauge` to the `notAfter` of `key`'s leaf certificate.
fn set_expiry(gauge: &IntGauge, key: &CertifiedKey) {
    if let Some(t) = key.cert.first().and_then(|c| crate::x509::not_after(c)) {
        gauge.set(t);
    }
}

/// The listener's certificate, as one load read it. A reload builds a new acceptor with a new
/// one (`server.rs`); connections keep the one they were accepted with.
#[derive(Debug)]
pub struct ReloadableCert {
    current: Arc<CertifiedKey>,
}

impl ReloadableCert {
    pub fn load(
        cert_path: &Path,
        key_path: &Path,
        expiry: IntGauge,
    ) -> Result<Arc<Self>, CertError> {
        let key = load_certified_key(cert_path, key_path)?;
        set_expiry(&expiry, &key);
        Ok(Arc::new(ReloadableCert {
            current: Arc::new(key),
        }))
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.clone())
    }
}

/// The listener's rustls config: ring, ALPN h2 and http/1.1.
pub fn server_config(cert: Arc<ReloadableCert>) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}
