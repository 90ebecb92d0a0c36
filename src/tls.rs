//! Listener TLS: a certificate resolver whose key pair can be swapped while connections stay up.
//! New handshakes get the new certificate; open connections keep theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

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

/// The listener's current certificate.
#[derive(Debug)]
pub struct ReloadableCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// `gateway_certificate_expiry_timestamp_seconds{certificate="listener"}`.
    expiry: IntGauge,
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
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            current: RwLock::new(Arc::new(key)),
            expiry,
        }))
    }

    /// Re-reads the files. A bad pair is refused and the old one stays in force.
    pub fn reload(&self) -> Result<(), CertError> {
        let key = load_certified_key(&self.cert_path, &self.key_path)?;
        set_expiry(&self.expiry, &key);
        if let Ok(mut current) = self.current.write() {
            *current = Arc::new(key);
        }
        Ok(())
    }

    pub fn paths(&self) -> [&Path; 2] {
        [&self.cert_path, &self.key_path]
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|k| k.clone())
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
