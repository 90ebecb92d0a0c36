//! The files a configuration names, their SHA-256, and the debounce that turns changes seen on
//! disk into one reload.

use std::path::{Path, PathBuf};

use crate::config::Config;

/// Every file `config` names, by its key. A key that names a file belongs here, so that a change
/// to the file reloads and `/config` shows its hash.
pub(crate) fn named(config: &Config) -> Vec<(&'static str, PathBuf)> {
    let keys: [(&'static str, &Option<PathBuf>); 10] = [
        ("listener.tls_cert", &config.listener.tls_cert),
        ("listener.tls_key", &config.listener.tls_key),
        ("upstream.ca_file", &config.upstream.ca_file),
        ("upstream.client_cert", &config.upstream.client_cert),
        ("upstream.client_key", &config.upstream.client_key),
        ("shared.key_secret_file", &config.shared.key_secret_file),
        ("validation.openapi", &config.validation.openapi),
        (
            "session.jwt_hs256_secret_file",
            &config.session.jwt_hs256_secret_file,
        ),
        (
            "session.jwt_public_key_file",
            &config.session.jwt_public_key_file,
        ),
        ("session.jwks_file", &config.session.jwks_file),
    ];
    keys.into_iter()
        .filter_map(|(key, path)| path.clone().map(|p| (key, p)))
        .collect()
}

/// The SHA-256 of a file's bytes (through symlinks, as Kubernetes mounts them); `None` when it
/// cannot be read.
pub(crate) fn sha256(path: &Path) -> Option<[u8; 32]> {
    let bytes = std::fs::read(path).ok()?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    digest.as_ref().try_into().ok()
}

pub(crate) fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the watched files held at one look: the config file's hash, then each named file's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Snapshot(Vec<(PathBuf, Option<[u8; 32]>)>);

impl Snapshot {
    /// The config file (when the gateway was started from one) and the files named by the config
    /// it now holds, or by `running` when it does not load: a change to the config that names a
    /// new file watches that file from then on.
    pub(crate) fn take(config_path: Option<&Path>, running: &Config) -> Snapshot {
        let mut files = Vec::new();
        let mut named_by = None;
        if let Some(path) = config_path {
            files.push((path.to_path_buf(), sha256(path)));
            named_by = Config::load(path).ok();
        }
        for (_, path) in named(named_by.as_ref().unwrap_or(running)) {
            let digest = sha256(&path);
            files.push((path, digest));
        }
        Snapshot(files)
    }
}

/// Debounces what the poller sees: a change reloads once the files have held still for one poll,
/// so that a reload never reads a file half written, or a certificate without its new key.
#[derive(Debug, Default)]
pub(crate) struct Debounce {
    /// What the last reload (or start-up) read.
    applied: Snapshot,
    /// A change seen at the last poll, not yet reloaded.
    pending: Option<Snapshot>,
}

impl Debounce {
    pub(crate) fn new(applied: Snapshot) -> Self {
        Debounce {
            applied,
            pending: None,
        }
    }

    /// One poll's look; `true`: reload now.
    pub(crate) fn observe(&mut self, now: Snapshot) -> bool {
        if now == self.applied {
            self.pending = None;
            return false;
        }
        if self.pending.as_ref() == Some(&now) {
            return true;
        }
        self.pending = Some(now);
        false
    }

    /// A reload read `snapshot` (whether it succeeded or not: a failed one is retried on the next
    /// change or SIGHUP, not at every poll).
    pub(crate) fn reloaded(&mut self, snapshot: Snapshot) {
        self.applied = snapshot;
        self.pending = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(bytes: &[u8]) -> Snapshot {
        let d = ring::digest::digest(&ring::digest::SHA256, bytes);
        Snapshot(vec![("a".into(), d.as_ref().try_into().ok())])
    }

    #[test]
    fn a_change_reloads_once_it_has_held_still_for_one_poll() {
        let mut d = Debounce::new(snap(b"v1"));
        assert!(!d.observe(snap(b"v1")));
        // Half written, then whole: each new content waits one more poll.
        assert!(!d.observe(snap(b"v2-half")));
        assert!(!d.observe(snap(b"v2")));
        assert!(d.observe(snap(b"v2")));
        d.reloaded(snap(b"v2"));
        assert!(!d.observe(snap(b"v2")));
        // Changed and changed back before the next poll: nothing to do.
        assert!(!d.observe(snap(b"v3")));
        assert!(!d.observe(snap(b"v2")));
        assert!(!d.observe(snap(b"v2")));
    }

    #[test]
    fn every_key_that_names_a_file_is_listed() {
        let mut c = Config::default();
        assert!(named(&c).is_empty());
        c.listener.tls_cert = Some("c.pem".into());
        c.listener.tls_key = Some("k.pem".into());
        c.upstream.ca_file = Some("ca.pem".into());
        c.validation.openapi = Some("api.yaml".into());
        c.session.jwks_file = Some("jwks.json".into());
        let keys: Vec<_> = named(&c).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "listener.tls_cert",
                "listener.tls_key",
                "upstream.ca_file",
                "validation.openapi",
                "session.jwks_file"
            ]
        );
    }

    #[test]
    fn sha256_is_the_standard_digest() {
        let dir = std::env::temp_dir().join(format!("cgw-sha-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("abc");
        std::fs::write(&f, b"abc").unwrap();
        assert_eq!(
            hex(&sha256(&f).unwrap()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(sha256(&dir.join("missing")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
