//! The pure decisions of a reload: which keys need a restart (they keep their running value), and
//! whether the session cache survives.

use std::path::PathBuf;

use crate::config::{Config, SessionConfig};
use crate::reload::files::sha256;

/// Keys read once at start-up: the sockets are bound, the runtime is built, the histograms are
/// registered and the log subscriber (its format; the level reloads) is installed. A reload keeps
/// their running value.
pub(crate) const RESTART_ONLY: [&str; 5] = [
    "listener.addr",
    "admin.addr",
    "runtime.worker_threads",
    "metrics.buckets",
    "log.format",
];

/// Gives `new` the running value of every restart-only key that differs, and names them.
pub(crate) fn keep_restart_only(running: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut kept = Vec::new();
    let mut keep = |key: &'static str, differs: bool| {
        if differs {
            kept.push(key);
        }
    };
    keep("listener.addr", running.listener.addr != new.listener.addr);
    new.listener.addr = running.listener.addr;
    keep("admin.addr", running.admin.addr != new.admin.addr);
    new.admin.addr = running.admin.addr;
    keep(
        "runtime.worker_threads",
        running.runtime.worker_threads != new.runtime.worker_threads,
    );
    new.runtime.worker_threads = running.runtime.worker_threads;
    keep(
        "metrics.buckets",
        running.metrics.buckets != new.metrics.buckets,
    );
    new.metrics.buckets = running.metrics.buckets.clone();
    keep("log.format", running.log.format != new.log.format);
    new.log.format = running.log.format;
    debug_assert!(kept.iter().all(|k| RESTART_ONLY.contains(k)));
    kept
}

/// A key file's path and the SHA-256 of its content (`None`: unreadable), when the key is set.
type KeyFile = Option<(PathBuf, Option<[u8; 32]>)>;

/// The `[session]` keys a cached verdict depends on: the local keys (path and content) and the
/// introspection endpoint. Anything else (TTLs, leeway, the token header) leaves verdicts valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionVerdictKeys {
    files: [(&'static str, KeyFile); 3],
    introspect_url: Option<String>,
}

impl SessionVerdictKeys {
    /// Reads the key files' hashes now.
    pub(crate) fn of(cfg: &SessionConfig) -> Self {
        let file = |p: &Option<PathBuf>| p.as_ref().map(|p| (p.clone(), sha256(p)));
        SessionVerdictKeys {
            files: [
                (
                    "session.jwt_hs256_secret_file",
                    file(&cfg.jwt_hs256_secret_file),
                ),
                (
                    "session.jwt_public_key_file",
                    file(&cfg.jwt_public_key_file),
                ),
                ("session.jwks_file", file(&cfg.jwks_file)),
            ],
            introspect_url: cfg.introspect_url.clone(),
        }
    }
}

/// Whether the session cache survives a reload: `Err` says why not (the keys that changed).
pub(crate) fn cache_kept(
    old: &SessionVerdictKeys,
    old_capacity: u64,
    new: &SessionVerdictKeys,
    new_capacity: u64,
) -> Result<(), String> {
    let mut changed: Vec<&str> = old
        .files
        .iter()
        .zip(&new.files)
        .filter(|(a, b)| a.1 != b.1)
        .map(|(a, _)| a.0)
        .collect();
    if old.introspect_url != new.introspect_url {
        changed.push("session.introspect_url");
    }
    if old_capacity != new_capacity {
        // The cache's bound is fixed when it is made.
        changed.push("session.cache_capacity");
    }
    if changed.is_empty() {
        Ok(())
    } else {
        Err(format!("{} changed", changed.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Dur, LogFormat};

    #[test]
    fn restart_only_keys_keep_their_running_value_and_are_named() {
        let running = Config::default();
        let mut new = Config::default();
        new.listener.addr = "127.0.0.1:1".parse().unwrap();
        new.runtime.worker_threads = 3;
        new.log.format = LogFormat::Json;
        new.limits.max_body_bytes = 10;
        let kept = keep_restart_only(&running, &mut new);
        assert_eq!(
            kept,
            ["listener.addr", "runtime.worker_threads", "log.format"]
        );
        assert_eq!(new.listener.addr, running.listener.addr);
        assert_eq!(new.runtime.worker_threads, 0);
        assert_eq!(new.log.format, LogFormat::Text);
        // Everything else is the new value.
        assert_eq!(new.limits.max_body_bytes, 10);
        assert!(keep_restart_only(&running, &mut Config::default()).is_empty());
    }

    #[test]
    fn the_session_cache_survives_unless_a_key_that_changes_verdicts_changed() {
        let dir = std::env::temp_dir().join(format!("cgw-diff-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, b"one").unwrap();
        let mut cfg = SessionConfig {
            jwt_hs256_secret_file: Some(secret.clone()),
            ..SessionConfig::default()
        };
        let before = SessionVerdictKeys::of(&cfg);
        // TTLs and leeway do not change a verdict.
        cfg.valid_ttl = Dur::secs(5);
        cfg.leeway = Dur::secs(1);
        let same = SessionVerdictKeys::of(&cfg);
        assert_eq!(cache_kept(&before, 10, &same, 10), Ok(()));
        // The secret's content does, as does the endpoint, and the capacity remakes the cache.
        std::fs::write(&secret, b"two").unwrap();
        let rotated = SessionVerdictKeys::of(&cfg);
        assert_eq!(
            cache_kept(&before, 10, &rotated, 10),
            Err("session.jwt_hs256_secret_file changed".into())
        );
        cfg.introspect_url = Some("https://auth.example/i".into());
        let remote = SessionVerdictKeys::of(&cfg);
        assert_eq!(
            cache_kept(&rotated, 10, &remote, 20),
            Err("session.introspect_url, session.cache_capacity changed".into())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
