//! Re-reads the listener certificate and `[upstream] ca_file`, `client_cert`, `client_key` on SIGHUP and when the files change
//! on disk (Kubernetes swaps mounted Secrets without a signal). A bad new file is refused and
//! logged; the old one stays in force.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::tls::ReloadableCert;
use crate::upstream::UpstreamTls;

#[derive(Clone)]
pub struct Reloader {
    pub cert: Option<Arc<ReloadableCert>>,
    pub upstream: UpstreamTls,
}

/// What a reload did, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reloaded {
    pub cert: Option<bool>,
    pub upstream_ca: Option<bool>,
}

fn digest(paths: &[PathBuf]) -> u64 {
    let mut h = DefaultHasher::new();
    for p in paths {
        // A missing or unreadable file digests as empty; the reload then reports the error.
        std::fs::read(p).unwrap_or_default().hash(&mut h);
    }
    h.finish()
}

impl Reloader {
    fn cert_paths(&self) -> Vec<PathBuf> {
        self.cert
            .as_ref()
            .map(|c| c.paths().iter().map(|p| p.to_path_buf()).collect())
            .unwrap_or_default()
    }

    pub fn reload_cert(&self) -> Option<bool> {
        let cert = self.cert.as_ref()?;
        Some(match cert.reload() {
            Ok(()) => {
                tracing::info!("listener certificate reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "new listener certificate refused; keeping the old one");
                false
            }
        })
    }

    pub fn reload_upstream_ca(&self) -> Option<bool> {
        if self.upstream.paths().is_empty() {
            return None;
        }
        Some(match self.upstream.reload() {
            Ok(true) => {
                tracing::info!(
                    client_cert_not_after = self.upstream.client_cert_expiry(),
                    "upstream ca_file or client certificate reloaded; connections made under the old trust are retired"
                );
                true
            }
            Ok(false) => {
                tracing::info!("upstream ca_file and client certificate unchanged");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "new upstream trust refused; keeping the old one");
                false
            }
        })
    }

    /// Everything, as on SIGHUP.
    pub fn reload_all(&self) -> Reloaded {
        Reloaded {
            cert: self.reload_cert(),
            upstream_ca: self.reload_upstream_ca(),
        }
    }

    /// Watches the files every `poll` and listens for SIGHUP, until `stop`. The files are read
    /// now, not when the future first runs, so that no change made after start-up is missed.
    pub fn run(
        self,
        poll: Duration,
        stop: watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = ()> {
        let cert_paths = self.cert_paths();
        let ca_paths: Vec<PathBuf> = self
            .upstream
            .paths()
            .into_iter()
            .map(Path::to_path_buf)
            .collect();
        let cert_digest = digest(&cert_paths);
        let ca_digest = digest(&ca_paths);
        self.watch(poll, stop, cert_paths, ca_paths, cert_digest, ca_digest)
    }

    async fn watch(
        self,
        poll: Duration,
        mut stop: watch::Receiver<bool>,
        cert_refs: Vec<PathBuf>,
        ca: Vec<PathBuf>,
        mut cert_digest: u64,
        mut ca_digest: u64,
    ) {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<Option<()>>();
            tokio::select! {
                _ = stop.changed() => return,
                _ = hangup => {
                    tracing::info!("SIGHUP: reloading certificates");
                    self.reload_all();
                    cert_digest = digest(&cert_refs);
                    ca_digest = digest(&ca);
                }
                _ = tick.tick() => {
                    let now = digest(&cert_refs);
                    if now != cert_digest {
                        cert_digest = now;
                        self.reload_cert();
                    }
                    let now = digest(&ca);
                    if now != ca_digest {
                        ca_digest = now;
                        self.reload_upstream_ca();
                    }
                }
            }
        }
    }
}
