//! Logging: `[log] format` and `level`. The level is `GATEWAY_LOG_LEVEL`, else the file's
//! `log.level`, else `RUST_LOG`, else `info` (gateway.md §1): a Deployment's `RUST_LOG` cannot
//! override the level an operator set in the ConfigMap.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use crate::config::{parse_log_filter, LogConfig, LogFormat};

/// Where the log filter came from, for the start-up line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LevelSource {
    /// `GATEWAY_LOG_LEVEL` or the file's `log.level`.
    Config,
    /// `RUST_LOG`, read only because the config did not set a level.
    RustLog,
    /// Neither: the default, `info`.
    Default,
}

/// The filter directive to use, and where it came from. `rust_log` is `RUST_LOG`'s value.
pub fn choose_level(cfg: &LogConfig, rust_log: Option<&str>) -> (String, LevelSource) {
    match rust_log.filter(|v| !v.trim().is_empty()) {
        _ if cfg.level_set => (cfg.level.clone(), LevelSource::Config),
        Some(v) => (v.to_string(), LevelSource::RustLog),
        None => (cfg.level.clone(), LevelSource::Default),
    }
}

/// Sets the running log filter from a reloaded `[log]`: the level follows the same precedence as
/// at start-up. Given to the reloader by `main`; the subscriber itself is process-wide.
pub type LevelHandle = Arc<dyn Fn(&LogConfig) -> Result<(), String> + Send + Sync>;

/// Installs the global subscriber. Call once, from `main`. The handle changes its level later.
pub fn init(cfg: &LogConfig) -> Result<(LevelSource, LevelHandle), String> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let (directive, source) = choose_level(cfg, rust_log.as_deref());
    let filter = parse_log_filter(&directive).map_err(|e| match source {
        LevelSource::RustLog => format!("RUST_LOG: {e}"),
        _ => format!("log.level: {e}"),
    })?;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // The filter sits under a reload layer, so that a reload can change the level (the
    // subscriber itself is installed once per process).
    let (filter, reload) = tracing_subscriber::reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    let result = match cfg.format {
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).try_init(),
        LogFormat::Text => registry.with(fmt).try_init(),
    };
    result.map_err(|e| e.to_string())?;
    remember_access();
    let handle: LevelHandle = Arc::new(move |cfg: &LogConfig| {
        let rust_log = std::env::var("RUST_LOG").ok();
        let (directive, _) = choose_level(cfg, rust_log.as_deref());
        let filter = parse_log_filter(&directive)?;
        let result = reload.reload(filter).map_err(|e| e.to_string());
        remember_access();
        result
    });
    Ok((source, handle))
}

/// Whether the `access` target is on at `info`, as the installed filter last said: asked once
/// per filter instead of once per request (about 140 instructions). 0: no filter installed by
/// [`init`] (tests with their own subscriber), so every call asks `tracing`.
static ACCESS: AtomicU8 = AtomicU8::new(0);

fn remember_access() {
    let on = tracing::enabled!(target: "access", tracing::Level::INFO);
    ACCESS.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// The access log's level check on the request path.
pub(crate) fn access_enabled() -> bool {
    match ACCESS.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => tracing::enabled!(target: "access", tracing::Level::INFO),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(level: &str, set: bool) -> LogConfig {
        LogConfig {
            level: level.into(),
            level_set: set,
            ..LogConfig::default()
        }
    }

    #[test]
    fn the_config_wins_over_rust_log_which_wins_over_the_default() {
        // Before: RUST_LOG=info (the Deployment's) overrode the ConfigMap's level.
        assert_eq!(
            choose_level(&cfg("debug", true), Some("info")),
            ("debug".into(), LevelSource::Config)
        );
        assert_eq!(
            choose_level(&cfg("info", false), Some("warn,hyper=info")),
            ("warn,hyper=info".into(), LevelSource::RustLog)
        );
        assert_eq!(
            choose_level(&cfg("info", false), None),
            ("info".into(), LevelSource::Default)
        );
        assert_eq!(
            choose_level(&cfg("info", false), Some(" ")),
            ("info".into(), LevelSource::Default)
        );
    }
}
