//! Reloading everything: on SIGHUP, or when the config file or a file it names changes on disk
//! (debounced; through symlinks, so that Kubernetes' swap of a ConfigMap's `..data` is seen), the
//! configuration is read and validated and a whole new stack is built off the request path, then
//! swapped in at once (`server.rs`). New requests use it; requests in flight finish on the old one;
//! no connection is closed. A reload that fails at any step changes nothing.
//!
//! What a reload keeps: restart-only keys (`diff::RESTART_ONLY`) keep their running value, with a
//! warning; the upstream pool while `[upstream]` is unchanged (a new CA file's content retires
//! connections made under the old one); the session cache unless a key that changes verdicts
//! changed (`diff::cache_kept`).

pub(crate) mod diff;
pub(crate) mod files;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::watch;

use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::server::StartError;
use files::{Debounce, Snapshot};

/// What a successful reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Restart-only keys that changed and kept their running value.
    pub restart_only: Vec<&'static str>,
    /// The upstream's trust anchors changed (or its pool was replaced): pooled connections made
    /// under the old ones are retired.
    pub upstream_trust_changed: bool,
    /// Why the session cache was cleared; `None`: it was kept.
    pub session_cache_cleared: Option<String>,
}

/// Why a reload failed; the old configuration stays in force. Each names the key (or the file
/// and line, or the OpenAPI document's pointer).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Build(#[from] StartError),
}

/// What the server does with a validated configuration: build everything for it and swap it in,
/// or change nothing and say why. It may lower a limit to fit the process (the open-file limit).
pub(crate) trait Apply: Send + Sync {
    fn apply(&self, config: &mut Config) -> Result<Applied, StartError>;
}

/// What `Apply` kept or replaced, for the log line.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub(crate) upstream_trust_changed: bool,
    pub(crate) session_cache_cleared: Option<String>,
}

/// The configuration in force, as `GET /config` shows it (pre-rendered at each load).
#[derive(Clone)]
pub(crate) struct Effective(Arc<ArcSwap<Bytes>>);

impl Effective {
    pub(crate) fn json(&self) -> Bytes {
        Bytes::clone(&self.0.load())
    }
}

/// `GET /config`: the configuration (secrets masked, as `--check-config` prints it) and the
/// SHA-256 of the config file and of every file it names.
fn render(config: &Config, config_path: Option<&Path>) -> Bytes {
    let file = |path: &Path| {
        serde_json::json!({
            "path": path.display().to_string(),
            "sha256": files::sha256(path).map(|d| files::hex(&d)),
        })
    };
    let named: serde_json::Map<String, serde_json::Value> = files::named(config)
        .into_iter()
        .map(|(key, path)| (key.to_string(), file(&path)))
        .collect();
    let body = serde_json::json!({
        "config": config,
        "config_file": config_path.map(file),
        "files": named,
    });
    let mut text = serde_json::to_vec_pretty(&body)
        .unwrap_or_else(|e| format!("{{\"error\": \"cannot render the config: {e}\"}}").into());
    text.push(b'\n');
    Bytes::from(text)
}

/// Reloads; one at a time. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Reloader(Arc<Inner>);

struct Inner {
    /// Where the configuration is read again; `None` (a gateway started from a `Config`): the
    /// same `Config` is applied again, re-reading the files it names.
    path: Option<PathBuf>,
    apply: Box<dyn Apply>,
    /// The configuration in force.
    running: ArcSwap<Config>,
    effective: Effective,
    metrics: Metrics,
    /// One reload at a time: a SIGHUP during a change seen on disk waits for it.
    one: Mutex<()>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Reloader {
    /// For the gateway started with `config` (already applied); start-up counts as the last
    /// successful load.
    pub(crate) fn new(
        path: Option<PathBuf>,
        config: Config,
        apply: Box<dyn Apply>,
        metrics: Metrics,
    ) -> Reloader {
        let effective = Effective(Arc::new(ArcSwap::from_pointee(render(
            &config,
            path.as_deref(),
        ))));
        metrics.config_last_reload_successful.set(1);
        metrics.config_last_reload_success_timestamp.set(unix_now());
        Reloader(Arc::new(Inner {
            path,
            apply,
            running: ArcSwap::from_pointee(config),
            effective,
            metrics,
            one: Mutex::new(()),
        }))
    }

    pub(crate) fn effective(&self) -> Effective {
        self.0.effective.clone()
    }

    /// The configuration in force.
    pub(crate) fn running(&self) -> Arc<Config> {
        self.0.running.load_full()
    }

    /// Reads the configuration again (from its file, when there is one) and applies it.
    pub(crate) fn reload(&self) -> Result<Reloaded, ReloadError> {
        self.reload_with(None)
    }

    /// Applies `config`, or the one read again when `None`; sets the reload metrics and logs the
    /// outcome.
    pub(crate) fn reload_with(&self, config: Option<Config>) -> Result<Reloaded, ReloadError> {
        let _one = self.0.one.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.try_reload(config);
        let m = &self.0.metrics;
        match &result {
            Ok(done) => {
                m.config_reloads.with_label_values(&["success"]).inc();
                m.config_last_reload_successful.set(1);
                m.config_last_reload_success_timestamp.set(unix_now());
                if !done.restart_only.is_empty() {
                    tracing::warn!(
                        keys = %done.restart_only.join(", "),
                        "configuration reloaded, but these keys need a restart: their old values stay in force"
                    );
                }
                let session_cache = match &done.session_cache_cleared {
                    None => "kept".to_string(),
                    Some(why) => format!("cleared: {why}"),
                };
                tracing::info!(
                    session_cache = %session_cache,
                    upstream_trust_changed = done.upstream_trust_changed,
                    "configuration reloaded"
                );
            }
            Err(e) => {
                m.config_reloads.with_label_values(&["failure"]).inc();
                m.config_last_reload_successful.set(0);
                tracing::error!(
                    error = %e,
                    "configuration reload failed; the old configuration stays in force"
                );
            }
        }
        result
    }

    fn try_reload(&self, config: Option<Config>) -> Result<Reloaded, ReloadError> {
        let running = self.0.running.load_full();
        let mut config = match (config, &self.0.path) {
            (Some(c), _) => {
                c.validate()?;
                c
            }
            (None, Some(path)) => Config::load(path)?,
            (None, None) => Config::clone(&running),
        };
        let restart_only = diff::keep_restart_only(&running, &mut config);
        let applied = self.0.apply.apply(&mut config)?;
        self.0
            .effective
            .0
            .store(Arc::new(render(&config, self.0.path.as_deref())));
        self.0.running.store(Arc::new(config));
        Ok(Reloaded {
            restart_only,
            upstream_trust_changed: applied.upstream_trust_changed,
            session_cache_cleared: applied.session_cache_cleared,
        })
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot::take(self.0.path.as_deref(), &self.running())
    }

    /// Listens for SIGHUP and looks at the files every `poll`, until `stop`. The signal handler
    /// and the first look are taken now, not when the future first runs, so that neither a signal
    /// nor a change right after start-up is missed.
    pub(crate) fn watch(
        self,
        poll: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = ()> {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| tracing::warn!(error = %e, "cannot listen for SIGHUP"))
            .ok();
        let mut debounce = Debounce::new(self.snapshot());
        async move {
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
                let reload = tokio::select! {
                    _ = stop.changed() => return,
                    _ = hangup => {
                        tracing::info!("SIGHUP: reloading the configuration");
                        true
                    }
                    _ = tick.tick() => {
                        let this = self.clone();
                        let now = tokio::task::spawn_blocking(move || this.snapshot()).await;
                        match now {
                            Ok(now) => debounce.observe(now),
                            Err(_) => false,
                        }
                    }
                };
                if !reload {
                    continue;
                }
                // Off the request path: reading files and compiling a document block.
                let this = self.clone();
                let read = tokio::task::spawn_blocking(move || {
                    let snapshot = this.snapshot();
                    let _ = this.reload();
                    snapshot
                })
                .await;
                if let Ok(snapshot) = read {
                    debounce.reloaded(snapshot);
                }
            }
        }
    }
}
